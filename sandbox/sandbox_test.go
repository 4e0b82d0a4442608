package sandbox

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"
)

// The tests that confine a process confine a child: this test binary run
// again with childEnv naming what the child does (see TestMain).
const childEnv = "VIO_SANDBOX_TEST_CHILD"

func TestMain(m *testing.M) {
	if what := os.Getenv(childEnv); what != "" {
		child(what)
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// runChild runs the child and returns its combined output and exit state.
func runChild(t *testing.T, what string, env ...string) (string, *os.ProcessState) {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(append(os.Environ(), childEnv+"="+what), env...)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	err := cmd.Run()
	var ee *exec.ExitError
	if err != nil && !errors.As(err, &ee) {
		t.Fatal(err)
	}
	return out.String(), cmd.ProcessState
}

// sysfs(2) is a harmless call vio never makes: the forbidden call.
const forbidden = unix.SYS_SYSFS

// onOtherThread runs f on a thread of its own that exists before the
// child confines itself, so that the tests see every thread confined, not
// only the one that called Apply.
func onOtherThread() (run func(f func())) {
	work := make(chan func())
	done := make(chan struct{})
	ready := make(chan struct{})
	go func() {
		runtime.LockOSThread()
		close(ready)
		for f := range work {
			f()
			done <- struct{}{}
		}
	}()
	<-ready
	return func(f func()) { work <- f; <-done }
}

func child(what string) {
	other := onOtherThread()
	fail := func(format string, a ...any) {
		fmt.Printf("child: "+format+"\n", a...)
		os.Exit(1)
	}
	switch what {
	case "seccomp-on", "seccomp-kill", "seccomp-log", "seccomp-fork":
		mode := map[string]Mode{"seccomp-on": On, "seccomp-kill": Kill, "seccomp-log": Log, "seccomp-fork": On}[what]
		rep, err := Apply(mode, Policy{NoLandlock: true})
		if err != nil {
			fail("%v", err)
		}
		if !rep.Seccomp {
			fmt.Println("child: no seccomp:", rep.Notes)
			os.Exit(77)
		}
		// Allowed calls still work, here and on the other thread.
		if unix.Getpid() != os.Getpid() {
			fail("getpid")
		}
		f, err := os.Open(os.Args[0])
		if err != nil {
			fail("open after confinement: %v", err)
		}
		f.Close()
		fmt.Println("child: allowed calls work")
		other(func() {
			if what == "seccomp-fork" {
				r, _, e := unix.RawSyscall(unix.SYS_CLONE, uintptr(unix.SIGCHLD), 0, 0)
				if e == 0 && r == 0 {
					unix.Exit(0) // the forked child, if the filter let it be
				}
				fmt.Printf("child: fork returned %d, %v\n", r, e)
				return
			}
			_, _, e := unix.Syscall(forbidden, 3, 0, 0)
			fmt.Printf("child: survived the forbidden call (%v)\n", e)
		})
	case "landlock":
		dir := os.Getenv("SANDBOX_DIR")
		rep, err := Apply(On, Policy{Rules: []Rule{
			{Path: filepath.Join(dir, "readable"), Access: Read},
			{Path: filepath.Join(dir, "writable"), Access: Read | Write},
			{Path: filepath.Join(dir, "scratch"), Access: Read | Write | Create},
			{Path: filepath.Join(dir, "absent"), Access: Read},
		}})
		if err != nil {
			fail("%v", err)
		}
		if rep.Landlock == 0 {
			fmt.Println("child: no Landlock:", rep.Notes)
			os.Exit(77)
		}
		if len(rep.Skipped) != 1 || rep.Skipped[0].Path != filepath.Join(dir, "absent") {
			fail("skipped %v, want the absent path", rep.Skipped)
		}
		other(func() {
			try := func(name string, flag int, want error) {
				f, err := os.OpenFile(filepath.Join(dir, name), flag, 0o600)
				if err == nil {
					f.Close()
				}
				if !errors.Is(err, want) && !(want == nil && err == nil) {
					fail("opening %s (flags %#x): %v, want %v", name, flag, err, want)
				}
			}
			try("readable", os.O_RDONLY, nil)
			try("readable", os.O_WRONLY, syscall.EACCES)
			try("writable", os.O_RDWR, nil)
			try("writable", os.O_RDWR|os.O_TRUNC, nil)
			try("secret", os.O_RDONLY, syscall.EACCES)
			try("new", os.O_CREATE|os.O_WRONLY, syscall.EACCES)
			try("scratch/new", os.O_CREATE|os.O_WRONLY, nil)
			for _, sock := range []string{filepath.Join(dir, "scratch", "sock"), filepath.Join(dir, "sock")} {
				fd, err := unix.Socket(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
				if err != nil {
					fail("socket: %v", err)
				}
				err = unix.Bind(fd, &unix.SockaddrUnix{Name: sock})
				unix.Close(fd)
				if inside := filepath.Dir(sock) != dir; inside != (err == nil) {
					fail("binding %s: %v", sock, err)
				}
			}
			if _, err := os.ReadDir(dir); !errors.Is(err, syscall.EACCES) {
				fail("listing the directory: %v, want EACCES", err)
			}
			if err := os.Remove(filepath.Join(dir, "scratch", "new")); err != nil {
				fail("removing a file where Create is granted: %v", err)
			}
			if err := os.Remove(filepath.Join(dir, "secret")); !errors.Is(err, syscall.EACCES) {
				fail("removing a file outside the rules: %v, want EACCES", err)
			}
			fmt.Println("child: landlock ok")
		})
	default:
		fail("unknown child %q", what)
	}
}

func skipIfUnsupported(t *testing.T, out string, st *os.ProcessState) {
	t.Helper()
	if st.ExitCode() == 77 {
		t.Skipf("this kernel lacks it: %s", out)
	}
}

func TestSeccompTrapsForbiddenCall(t *testing.T) {
	out, st := runChild(t, "seccomp-on")
	skipIfUnsupported(t, out, st)
	t.Log(out)
	if !strings.Contains(out, "child: allowed calls work") {
		t.Fatalf("the confined child could not make allowed calls:\n%s", out)
	}
	if strings.Contains(out, "survived") {
		t.Fatalf("the forbidden call ran:\n%s", out)
	}
	if st.ExitCode() != 2 || !strings.Contains(out, "SIGSYS: bad system call") {
		t.Fatalf("exit status %d, want 2 with the runtime's SIGSYS report:\n%s", st.ExitCode(), out)
	}
	// The report names the call: its number in rax (the kernel rolls
	// the call back), the Go caller in the stack.
	if want := fmt.Sprintf("rax    %#x\n", forbidden); !strings.Contains(out, want) {
		t.Errorf("the report does not show %q:\n%s", want, out)
	}
	if !strings.Contains(out, "sandbox.child") {
		t.Errorf("the report's stack does not name the caller:\n%s", out)
	}
}

func TestSeccompKillMode(t *testing.T) {
	out, st := runChild(t, "seccomp-kill")
	skipIfUnsupported(t, out, st)
	ws := st.Sys().(syscall.WaitStatus)
	if !ws.Signaled() || ws.Signal() != syscall.SIGSYS {
		t.Fatalf("child ended with %v, want killed by SIGSYS:\n%s", st, out)
	}
	if !strings.Contains(out, "child: allowed calls work") || strings.Contains(out, "survived") {
		t.Fatalf("output:\n%s", out)
	}
}

func TestSeccompLogMode(t *testing.T) {
	out, st := runChild(t, "seccomp-log")
	skipIfUnsupported(t, out, st)
	if st.ExitCode() != 0 || !strings.Contains(out, "survived the forbidden call") {
		t.Fatalf("log mode must let the call run: exit %d:\n%s", st.ExitCode(), out)
	}
}

func TestSeccompRefusesFork(t *testing.T) {
	out, st := runChild(t, "seccomp-fork")
	skipIfUnsupported(t, out, st)
	if st.ExitCode() != 2 || !strings.Contains(out, "SIGSYS: bad system call") || strings.Contains(out, "fork returned") {
		t.Fatalf("a fork was not refused: exit %d:\n%s", st.ExitCode(), out)
	}
}

func TestLandlockConfinesEveryThread(t *testing.T) {
	dir := t.TempDir()
	for _, f := range []string{"readable", "writable", "secret"} {
		if err := os.WriteFile(filepath.Join(dir, f), []byte("#!/bin/sh\n"), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Mkdir(filepath.Join(dir, "scratch"), 0o700); err != nil {
		t.Fatal(err)
	}
	out, st := runChild(t, "landlock", "SANDBOX_DIR="+dir)
	skipIfUnsupported(t, out, st)
	if st.ExitCode() != 0 || !strings.Contains(out, "child: landlock ok") {
		t.Fatalf("exit %d:\n%s", st.ExitCode(), out)
	}
}

func TestExplainOnlyPermissionErrorsOfAConfinedProcess(t *testing.T) {
	perm := &os.PathError{Op: "open", Path: "/snap", Err: syscall.EACCES}
	if got := Explain(perm, "/snap"); got != perm {
		t.Fatalf("unconfined: %v", got)
	}
	confined.Store(true)
	defer confined.Store(false)
	got := Explain(perm, "/snap")
	if !errors.Is(got, syscall.EACCES) || !strings.Contains(got.Error(), "--sandbox-allow") {
		t.Fatalf("confined: %v", got)
	}
	other := &os.PathError{Op: "open", Path: "/snap", Err: syscall.ENOSPC}
	if got := Explain(other, "/snap"); got != other {
		t.Fatalf("not a permission error: %v", got)
	}
	if Explain(nil, "/snap") != nil {
		t.Fatal("nil error explained")
	}
}
