package vcpu_test

import (
	"fmt"
	"log"

	"github.com/viovmm/vio/bus"
	"github.com/viovmm/vio/kvm"
	"github.com/viovmm/vio/vcpu"
)

// A VM owner wires vCPUs to its buses and turns events into VM-wide
// decisions on its own goroutine (a Handler runs on the vCPU's thread and
// must not Pause or Stop its own Group).
func Example() {
	sys, err := kvm.Open("")
	if err != nil {
		log.Fatal(err) // errors.Is(err, kvm.ErrNoKVM): tell the user to load kvm
	}
	defer sys.Close()
	vm, err := sys.CreateVM()
	if err != nil {
		log.Fatal(err)
	}
	defer vm.Close()
	// ... memory slots, irqchip, CPUID and boot registers go here ...

	pio, mmio := bus.New("pio"), bus.New("mmio")
	events := make(chan vcpu.Event, 4)
	handler := func(ev vcpu.Event) vcpu.Action {
		select {
		case events <- ev:
		default: // the owner is already reacting to an earlier event
		}
		return vcpu.Park // keep the guest's state for the owner to inspect
	}
	var runners []*vcpu.Runner
	for id := 0; id < 2; id++ {
		cpu, err := vm.CreateVCPU(id)
		if err != nil {
			log.Fatal(err)
		}
		defer cpu.Close()
		runners = append(runners, vcpu.New(cpu, vcpu.Config{PIO: pio, MMIO: mmio, Handler: handler}))
	}
	g := vcpu.NewGroup(runners...)
	if err := g.Start(); err != nil {
		log.Fatal(err)
	}
	ev := <-events
	g.Stop() // from the owner's goroutine: every vCPU leaves KVM_RUN for good
	fmt.Println("guest stopped:", ev)
}
