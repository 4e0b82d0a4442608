package nbd

import (
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/viovmm/vio/block/raw"
)

// BenchmarkFioServer compares this package's server with qemu-nbd serving
// the same raw file, as seen by fio's nbd engine (libnbd), side by side.
// It is not part of the test suite (benchmarks run only with -bench):
//
//	go test -run '^$' -bench FioServer -benchtime 1x ./block/nbd/
//
// BENCH_RUNTIME (seconds per workload, default 5) and BENCH_SIZE_MB
// (default 256) tune it.
func BenchmarkFioServer(b *testing.B) {
	fio, err := exec.LookPath("fio")
	if err != nil {
		b.Skip("fio not installed (apt-get install fio)")
	}
	if out, _ := exec.Command(fio, "--enghelp").CombinedOutput(); !strings.Contains(string(out), "\tnbd\n") {
		b.Skip("this fio has no nbd engine (it needs libnbd)")
	}
	qnbd, err := exec.LookPath("qemu-nbd")
	if err != nil {
		b.Skip("qemu-nbd not installed (apt-get install qemu-utils)")
	}
	runtime := envInt("BENCH_RUNTIME", 5)
	sizeMB := envInt("BENCH_SIZE_MB", 256)
	dir := b.TempDir()
	img := filepath.Join(dir, "bench.img")
	fillRandom(b, img, int64(sizeMB)<<20)

	type workload struct{ name, rw, bs, depth string }
	workloads := []workload{
		{"4k randread qd32", "randread", "4k", "32"},
		{"4k randwrite qd32", "randwrite", "4k", "32"},
		{"1M read qd8", "read", "1M", "8"},
		{"1M write qd8", "write", "1M", "8"},
	}
	for i := 0; i < b.N; i++ {
		results := map[string][2]fioResult{}
		// Ours, in this process, and qemu-nbd, both on unix sockets and on
		// the same file (never used at the same time).
		f, err := raw.Open(img, raw.Options{})
		if err != nil {
			b.Fatal(err)
		}
		s, err := NewServer(Export{Name: "disk", Backend: f})
		if err != nil {
			b.Fatal(err)
		}
		sock := filepath.Join(dir, "vio.sock")
		l, err := Listen("unix:" + sock)
		if err != nil {
			b.Fatal(err)
		}
		go s.Serve(l)
		qsock := filepath.Join(dir, "qemu.sock")
		cmd := exec.Command(qnbd, "-f", "raw", "-k", qsock, "-x", "disk", "-t", img)
		cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
		if err := cmd.Start(); err != nil {
			b.Fatal(err)
		}
		waitUnix(qsock)
		uris := [2]string{"nbd+unix:///disk?socket=" + sock, "nbd+unix:///disk?socket=" + qsock}
		for k, w := range workloads {
			// Alternate who goes first, and start each run with no dirty
			// pages left by the previous one, so neither pays the other's
			// writeback.
			r := results[w.name]
			for _, who := range [][2]int{{0, 1}, {1, 0}}[k%2] {
				syscall.Sync()
				r[who] = runFio(b, fio, uris[who], w.rw, w.bs, w.depth, sizeMB, runtime)
			}
			results[w.name] = r
		}
		syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		cmd.Wait()
		s.Close()
		f.Close()

		fmt.Printf("\nfio nbd engine, %d MiB raw file, %ds per workload (unix socket)\n", sizeMB, runtime)
		fmt.Printf("%-20s %12s %10s %12s %10s %8s\n", "workload", "vio IOPS", "vio MB/s", "qemu IOPS", "qemu MB/s", "vio/qemu")
		for _, w := range workloads {
			r := results[w.name]
			ratio := 0.0
			if r[1].iops > 0 {
				ratio = r[0].iops / r[1].iops
			}
			fmt.Printf("%-20s %12.0f %10.1f %12.0f %10.1f %8.2f\n", w.name, r[0].iops, r[0].mbps, r[1].iops, r[1].mbps, ratio)
			b.ReportMetric(ratio, strings.ReplaceAll(w.name, " ", "_")+"_vio/qemu")
		}
	}
}

type fioResult struct{ iops, mbps float64 }

func runFio(b *testing.B, fio, uri, rw, bs, depth string, sizeMB, runtime int) fioResult {
	out := filepath.Join(b.TempDir(), "fio.json")
	cmd := exec.Command(fio, "--name=bench", "--ioengine=nbd", "--uri="+uri, "--rw="+rw, "--bs="+bs,
		"--iodepth="+depth, fmt.Sprintf("--size=%dM", sizeMB), "--time_based", fmt.Sprintf("--runtime=%d", runtime),
		"--randrepeat=0", "--output-format=json", "--output="+out)
	if msg, err := cmd.CombinedOutput(); err != nil {
		b.Fatalf("fio %s on %s: %v\n%s", rw, uri, err, msg)
	}
	data, err := os.ReadFile(out)
	if err != nil {
		b.Fatal(err)
	}
	var rep struct {
		Jobs []struct {
			Read, Write struct {
				IOPS float64 `json:"iops"`
				BW   float64 `json:"bw"` // KiB/s
			}
		} `json:"jobs"`
	}
	if err := json.Unmarshal(data, &rep); err != nil || len(rep.Jobs) == 0 {
		b.Fatalf("fio output: %v\n%s", err, data)
	}
	j := rep.Jobs[0]
	r := fioResult{iops: j.Read.IOPS + j.Write.IOPS, mbps: (j.Read.BW + j.Write.BW) * 1024 / 1e6}
	return r
}

func fillRandom(b *testing.B, path string, size int64) {
	f, err := os.Create(path)
	if err != nil {
		b.Fatal(err)
	}
	defer f.Close()
	rng := rand.New(rand.NewPCG(9, 9))
	buf := make([]byte, 1<<20)
	for off := int64(0); off < size; off += int64(len(buf)) {
		for i := 0; i < len(buf); i += 8 {
			v := rng.Uint64()
			for k := 0; k < 8; k++ {
				buf[i+k] = byte(v >> (8 * k))
			}
		}
		if _, err := f.Write(buf[:min(int64(len(buf)), size-off)]); err != nil {
			b.Fatal(err)
		}
	}
}

func envInt(name string, def int) int {
	var v int
	if _, err := fmt.Sscan(os.Getenv(name), &v); err != nil || v <= 0 {
		return def
	}
	return v
}

// BenchmarkClient measures this package's client against qemu-nbd (when
// installed) and against this package's server: 4 KiB random reads and
// writes from 32 goroutines, and 1 MiB sequential reads.
//
//	go test -run '^$' -bench Client ./block/nbd/
func BenchmarkClient(b *testing.B) {
	const size = 64 << 20
	dir := b.TempDir()
	img := filepath.Join(dir, "c.img")
	fillRandom(b, img, size)
	servers := map[string]string{}
	f, err := raw.Open(img, raw.Options{})
	if err != nil {
		b.Fatal(err)
	}
	defer f.Close()
	s, err := NewServer(Export{Name: "disk", Backend: f})
	if err != nil {
		b.Fatal(err)
	}
	l, err := Listen("unix:" + filepath.Join(dir, "vio.sock"))
	if err != nil {
		b.Fatal(err)
	}
	go s.Serve(l)
	defer s.Close()
	servers["vio"] = "nbd+unix:///disk?socket=" + filepath.Join(dir, "vio.sock")
	if qnbd, err := exec.LookPath("qemu-nbd"); err == nil {
		qsock := filepath.Join(dir, "qemu.sock")
		cmd := exec.Command(qnbd, "-f", "raw", "-k", qsock, "-x", "disk", "-t", "--shared=4", img)
		cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
		if err := cmd.Start(); err != nil {
			b.Fatal(err)
		}
		defer func() {
			syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
			cmd.Wait()
		}()
		waitUnix(qsock)
		servers["qemu-nbd"] = "nbd+unix:///disk?socket=" + qsock
	}
	for _, name := range []string{"vio", "qemu-nbd"} {
		uri, ok := servers[name]
		if !ok {
			continue
		}
		c, err := Dial(context.Background(), uri, Options{})
		if err != nil {
			b.Fatal(err)
		}
		for _, w := range []struct {
			name  string
			n     int
			write bool
		}{{"randread4k", 4096, false}, {"randwrite4k", 4096, true}, {"read1M", 1 << 20, false}} {
			b.Run(name+"/"+w.name, func(b *testing.B) {
				b.SetBytes(int64(w.n))
				b.SetParallelism(16)
				b.RunParallel(func(pb *testing.PB) {
					buf := make([]byte, w.n)
					rng := rand.New(rand.NewPCG(rand.Uint64(), 1))
					for pb.Next() {
						off := rng.Int64N(size/int64(w.n)) * int64(w.n)
						var err error
						if w.write {
							_, err = c.WriteAt(buf, off)
						} else {
							_, err = c.ReadAt(buf, off)
						}
						if err != nil {
							b.Error(err)
							return
						}
					}
				})
			})
		}
		c.Close()
	}
}

// waitUnix waits until a server accepts on the unix socket at path.
func waitUnix(path string) {
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); {
		if c, err := net.Dial("unix", path); err == nil {
			c.Close()
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
}
