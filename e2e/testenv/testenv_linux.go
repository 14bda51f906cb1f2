package testenv

import (
	"bufio"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/sluice-mesh/sluice/dataplane"
)

const inNetNSEnv = "SLUICE_TEST_IN_NETNS"

// Privileged reports whether the process can load BPF programs and manage
// cgroups, and if not, why.
func Privileged() (bool, string) {
	if os.Geteuid() != 0 {
		return false, "needs root (BPF programs, cgroups, bpffs)"
	}
	if _, err := os.Stat("/sys/kernel/btf/vmlinux"); err != nil {
		return false, "needs kernel BTF at /sys/kernel/btf/vmlinux"
	}
	return true, ""
}

// RequirePrivileged skips the test when it cannot run here, saying why.
// Under CI=true a skip would hide a regression, so it fails the test instead.
func RequirePrivileged(t testing.TB) {
	t.Helper()
	ok, why := Privileged()
	if ok {
		if os.Getenv(inNetNSEnv) == "" {
			t.Fatal("privileged test not running in its private network namespace: call testenv.Main from TestMain")
		}
		return
	}
	if os.Getenv("CI") == "true" {
		t.Fatalf("privileged test cannot run under CI=true: %s", why)
	}
	t.Skip("skipping privileged test: " + why)
}

// Main runs the tests of a package. When privileged, it first re-executes the
// test binary in a new network namespace with only loopback up, so a socket
// the code under test fails to translate can reach nothing outside the test.
// Use it as `func TestMain(m *testing.M) { testenv.Main(m) }`.
func Main(m *testing.M) {
	if ok, _ := Privileged(); !ok || os.Getenv(inNetNSEnv) != "" {
		if os.Getenv(inNetNSEnv) != "" {
			if out, err := exec.Command("ip", "link", "set", "lo", "up").CombinedOutput(); err != nil {
				fmt.Fprintf(os.Stderr, "testenv: bring up loopback: %v: %s\n", err, out)
				os.Exit(1)
			}
		}
		os.Exit(m.Run())
	}
	cmd := exec.Command(os.Args[0], os.Args[1:]...)
	cmd.Stdin, cmd.Stdout, cmd.Stderr = os.Stdin, os.Stdout, os.Stderr
	cmd.Env = append(os.Environ(), inNetNSEnv+"=1")
	cmd.SysProcAttr = &syscall.SysProcAttr{Cloneflags: syscall.CLONE_NEWNET, Pdeathsig: syscall.SIGKILL}
	err := cmd.Run()
	var exit *exec.ExitError
	switch {
	case err == nil:
		os.Exit(0)
	case errors.As(err, &exit):
		os.Exit(exit.ExitCode())
	default:
		fmt.Fprintf(os.Stderr, "testenv: re-exec in a new network namespace: %v\n", err)
		os.Exit(1)
	}
}

// UniqueName returns prefix plus a random suffix, for objects that must not
// collide with other runs.
func UniqueName(prefix string) string {
	b := make([]byte, 4)
	_, _ = rand.Read(b)
	return prefix + hex.EncodeToString(b)
}

// PinDir returns a fresh directory on bpffs (mounting bpffs at /sys/fs/bpf
// if needed). At cleanup the test fails if anything is left in it: tests
// must tear down what they pin.
func PinDir(t testing.TB) string {
	t.Helper()
	dir := filepath.Join(dataplane.DefaultBPFFS, UniqueName("sluice-test-"))
	if err := dataplane.EnsureBPFFS(dir); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		entries, err := os.ReadDir(dir)
		if errors.Is(err, os.ErrNotExist) {
			return
		}
		var names []string
		for _, e := range entries {
			names = append(names, e.Name())
			_ = os.Remove(filepath.Join(dir, e.Name()))
		}
		_ = os.Remove(dir)
		t.Errorf("pin directory %s left behind with %v", dir, names)
	})
	return dir
}

// Cgroup creates a cgroup2 directory for the test (under a per-test parent
// below the cgroup2 mount) and removes it at cleanup, moving this process
// back to where it started and failing the test if the cgroup cannot go.
func Cgroup(t testing.TB, parent, name string) string {
	t.Helper()
	if parent == "" {
		mount, err := dataplane.Cgroup2Mount()
		if err != nil {
			t.Fatal(err)
		}
		parent = mount
	}
	dir := filepath.Join(parent, name)
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatalf("create cgroup: %v", err)
	}
	t.Cleanup(func() {
		var err error
		for range 50 {
			if err = os.Remove(dir); err == nil || errors.Is(err, os.ErrNotExist) {
				return
			}
			time.Sleep(20 * time.Millisecond) // exited members take a moment to leave
		}
		t.Errorf("remove cgroup %s: %v", dir, err)
	})
	return dir
}

// EnterCgroup moves the whole test process into cgroup dir; sockets created
// afterwards belong to it. The process returns to its original cgroup when
// the test ends (registered before the cgroup's own cleanup runs).
func EnterCgroup(t testing.TB, dir string) {
	t.Helper()
	orig, err := ownCgroup()
	if err != nil {
		t.Fatal(err)
	}
	if err := moveSelf(dir); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := moveSelf(orig); err != nil {
			t.Errorf("return to cgroup %s: %v", orig, err)
		}
	})
}

func moveSelf(dir string) error {
	err := os.WriteFile(filepath.Join(dir, "cgroup.procs"), []byte(strconv.Itoa(os.Getpid())), 0)
	if err != nil {
		return fmt.Errorf("move process into cgroup %s: %w", dir, err)
	}
	return nil
}

// ownCgroup returns the cgroup2 directory this process is in.
func ownCgroup() (string, error) {
	mount, err := dataplane.Cgroup2Mount()
	if err != nil {
		return "", err
	}
	f, err := os.Open("/proc/self/cgroup")
	if err != nil {
		return "", err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if rest, ok := strings.CutPrefix(sc.Text(), "0::"); ok {
			return filepath.Join(mount, rest), nil
		}
	}
	return "", errors.New("no cgroup2 entry in /proc/self/cgroup")
}
