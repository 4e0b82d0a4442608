package jail_test

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/viovmm/vio/jail"
)

// The test binary is its own jailed child: Spawn starts it again with
// jail.RootEnv set, and TestMain then runs child instead of the tests.
func TestMain(m *testing.M) {
	if root, ok := jail.Child(); ok {
		os.Exit(child(root))
	}
	if os.Getenv("JAIL_TEST_SPAWN") != "" {
		// The supervising process of spawn.
		code, err := jail.Spawn(nil, os.Getenv("JAIL_TEST_PARENT"))
		if err != nil {
			fmt.Println("spawn:", err)
			os.Exit(1)
		}
		os.Exit(code)
	}
	os.Exit(m.Run())
}

const nobody = 65534

// child enters a jail that keeps the files named in JAIL_TEST_RO and
// JAIL_TEST_RW and /dev/kvm's number as a node, then reports what it can
// and cannot do, one fact a line.
func child(root string) int {
	ro, rw := os.Getenv("JAIL_TEST_RO"), os.Getenv("JAIL_TEST_RW")
	held, err := os.Open(os.Getenv("JAIL_TEST_HELD")) // opened before, as vio opens disks
	if err != nil {
		fmt.Println("open held:", err)
		return 1
	}
	kvm := filepath.Join(filepath.Dir(ro), "kvm-node")
	if err := unix.Mknod(kvm, unix.S_IFCHR|0o600, int(unix.Mkdev(10, 232))); err != nil {
		fmt.Println("mknod:", err)
		return 1
	}
	err = jail.Enter(jail.Spec{Root: root, User: jail.User{UID: nobody, GID: nobody},
		Binds: []jail.Bind{{Path: ro}, {Path: rw, Writable: true}, {Path: kvm, Writable: true}, {Path: "/no/such/file"}}})
	if err != nil {
		fmt.Println("enter:", err)
		return 1
	}
	fact := func(k string, v any) { fmt.Printf("%s=%v\n", k, v) }
	fact("pid", os.Getpid())
	fact("uid", os.Getuid())
	fact("euid", os.Geteuid())
	fact("gid", os.Getgid())
	groups, _ := os.Getgroups()
	fact("groups", len(groups))
	b, err := os.ReadFile(ro)
	fact("read-ro", string(b)+errText(err))
	fact("write-ro", errText(os.WriteFile(ro, []byte("x"), 0)))
	fact("write-rw", errText(os.WriteFile(rw, []byte("written in jail"), 0)))
	b = make([]byte, 4)
	_, err = held.ReadAt(b, 0)
	fact("read-held", string(b)+errText(err))
	_, err = os.Stat("/etc/passwd")
	fact("host-etc", errors.Is(err, os.ErrNotExist))
	fact("create-root", errText(os.WriteFile("/new", nil, 0o600)))
	var st unix.Stat_t
	if err := unix.Stat(kvm, &st); err != nil {
		fact("kvm", err)
	} else {
		fact("kvm", fmt.Sprintf("%d:%d uid %d mode %o", unix.Major(st.Rdev), unix.Minor(st.Rdev), st.Uid, st.Mode&0o777))
	}
	caps, _ := os.ReadFile("/proc/self/status")
	for _, l := range strings.Split(string(caps), "\n") {
		if strings.HasPrefix(l, "CapEff:") {
			fact("capeff", strings.TrimSpace(strings.TrimPrefix(l, "CapEff:")))
		}
	}
	fact("mknod", errText(unix.Mknod("/dev/kvm2", unix.S_IFCHR|0o600, int(unix.Mkdev(10, 232)))))
	fact("chroot", errText(syscall.Chroot("/")))
	return 0
}

func errText(err error) string {
	switch {
	case err == nil:
		return ""
	case errors.Is(err, os.ErrPermission), errors.Is(err, unix.EROFS):
		return "denied"
	default:
		return err.Error()
	}
}

// TestSpawnAndEnter: a jailed process is PID 1 of its namespace, runs as
// the jail's user with no capabilities and no groups, sees its bound
// files at their own paths (read-only unless writable), keeps what it had
// open, gets device nodes of its own, and sees nothing else of the host.
func TestSpawnAndEnter(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("the jail needs root")
	}
	dir := t.TempDir()
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	ro, rw, held := filepath.Join(dir, "ro"), filepath.Join(dir, "rw"), filepath.Join(dir, "held")
	for f, s := range map[string]string{ro: "read only", rw: "", held: "held"} {
		if err := os.WriteFile(f, []byte(s), 0o666); err != nil {
			t.Fatal(err)
		}
		if err := os.Chown(f, nobody, nobody); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Chmod(held, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Chown(held, 0, 0); err != nil { // only root may open it
		t.Fatal(err)
	}
	var out bytes.Buffer
	code, facts := spawn(t, map[string]string{"JAIL_TEST_RO": ro, "JAIL_TEST_RW": rw, "JAIL_TEST_HELD": held}, &out)
	if code != 0 {
		t.Fatalf("jailed child exited %d:\n%s", code, out.String())
	}
	want := map[string]string{
		"pid": "1", "uid": "65534", "euid": "65534", "gid": "65534", "groups": "0",
		"read-ro": "read only", "write-ro": "denied", "write-rw": "",
		"read-held": "held", "host-etc": "true", "create-root": "denied",
		"kvm": "10:232 uid 65534 mode 600", "capeff": "0000000000000000",
		"mknod": "denied", "chroot": "denied",
	}
	for k, v := range want {
		if facts[k] != v {
			t.Errorf("%s = %q, want %q", k, facts[k], v)
		}
	}
	if b, err := os.ReadFile(rw); err != nil || string(b) != "written in jail" {
		t.Errorf("the writable file holds %q (%v) on the host", b, err)
	}
	if t.Failed() {
		t.Logf("child said:\n%s", out.String())
	}
	// The jail's directory is gone, and nothing of it was mounted here.
	if m, _ := os.ReadFile("/proc/self/mountinfo"); bytes.Contains(m, []byte("vio-jail-")) {
		t.Errorf("a jail mount shows on the host:\n%s", m)
	}
	if left, _ := filepath.Glob(filepath.Join(dir, "vio-jail-*")); len(left) != 0 {
		t.Errorf("the jail's directory was left behind: %v", left)
	}
}

// spawn runs this test binary jailed through jail.Spawn in a helper
// process (Spawn forwards the process's own stdio), and returns its exit
// status and the facts it printed.
func spawn(t *testing.T, env map[string]string, out *bytes.Buffer) (int, map[string]string) {
	t.Helper()
	// Spawn hands the child this process's stdout; run Spawn in a
	// process of its own whose stdout is a pipe, so the facts come back.
	cmd := exec.Command(os.Args[0])
	cmd.Env = append(os.Environ(), "JAIL_TEST_SPAWN=1", "JAIL_TEST_PARENT="+filepath.Dir(env["JAIL_TEST_RO"]))
	for k, v := range env {
		cmd.Env = append(cmd.Env, k+"="+v)
	}
	cmd.Stdout, cmd.Stderr = out, out
	err := cmd.Run()
	code := 0
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatal(err)
	}
	facts := map[string]string{}
	for _, l := range strings.Split(out.String(), "\n") {
		if k, v, ok := strings.Cut(l, "="); ok {
			facts[k] = v
		}
	}
	return code, facts
}

func TestUserCheck(t *testing.T) {
	for _, u := range []jail.User{{0, 100}, {100, 0}, {-1, 5}} {
		if err := u.Check(); err == nil {
			t.Errorf("%+v accepted", u)
		}
	}
	if err := (jail.User{UID: 1000, GID: 1000}).Check(); err != nil {
		t.Error(err)
	}
}
