// Command migguest is the guest half of e2e's TestLiveMigration, QEMU's
// migration-test pattern: it increments the first byte of every page of
// an area in an endless loop, and checks each byte before it increments
// it. At any moment the bytes are all equal except at one boundary, where
// the pages already done this pass are one higher; a page whose update a
// migration lost breaks that, and the check finds it in the next pass.
// A second goroutine reads the monotonic clock in a tight loop and keeps
// the longest gap between two readings: a pause of the VM shows there.
// Once a second it prints
//
//	VIO-MIG pass=N bad=B gap_us=G
//
// with G the longest gap since the previous line.
package main

import (
	"fmt"
	"os"
	"strconv"
	"sync/atomic"
	"syscall"
	"time"
)

const pageSize = 4096

func main() {
	mib := 64
	if len(os.Args) > 1 {
		mib, _ = strconv.Atoi(os.Args[1])
	}
	area, err := syscall.Mmap(-1, 0, mib<<20, syscall.PROT_READ|syscall.PROT_WRITE, syscall.MAP_PRIVATE|syscall.MAP_ANONYMOUS|syscall.MAP_POPULATE)
	if err != nil {
		fmt.Println("VIO-MIG-ERROR", err)
		os.Exit(1)
	}
	var pass, bad atomic.Uint64
	var gap atomic.Int64
	go func() {
		last := time.Now()
		next := last.Add(time.Second)
		for {
			now := time.Now()
			if d := now.Sub(last); d > time.Duration(gap.Load()) {
				gap.Store(int64(d))
			}
			last = now
			if now.After(next) {
				fmt.Printf("VIO-MIG pass=%d bad=%d gap_us=%d\n", pass.Load(), bad.Load(), gap.Swap(0)/1000)
				next = now.Add(time.Second)
			}
		}
	}()
	for p := uint64(0); ; p++ {
		want := byte(p)
		for i := 0; i < len(area); i += pageSize {
			if area[i] != want {
				bad.Add(1)
				area[i] = want // count each lost update once
			}
			area[i] = want + 1
		}
		pass.Store(p + 1)
	}
}
