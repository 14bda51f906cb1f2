package demo_test

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/sluice-mesh/sluice/dataplane"
	"github.com/sluice-mesh/sluice/e2e/testenv"
)

func TestMain(m *testing.M) { testenv.Main(m) }

// The demo binary runs its three phases, exits 0 and leaves no pin,
// network namespace, bridge or cgroup behind.
func TestDemoRunsAndCleansUp(t *testing.T) {
	testenv.RequirePrivileged(t)
	if _, err := exec.LookPath("curl"); err != nil {
		t.Fatal("the demo needs curl")
	}
	bin := filepath.Join(t.TempDir(), "sluice")
	if out, err := exec.Command("go", "build", "-o", bin, "github.com/sluice-mesh/sluice/cmd/sluice").CombinedOutput(); err != nil {
		t.Fatalf("build sluice: %v\n%s", err, out)
	}
	before := leftovers(t)

	out, err := exec.Command(bin, "demo", "--requests", "30", "--mesh", "../../examples/mesh.yaml").CombinedOutput()
	if err != nil {
		t.Fatalf("sluice demo: %v\n%s", err, out)
	}
	for _, want := range []string{
		"1) demo/web 10.96.0.10:80",
		"curl's peer address (getpeername) was 10.96.0.10:80 on every connection",
		"was answered by backend-a",                // UDP through the VIP
		"backend-b    0",                           // step 2: draining gets no new connections
		`-> "Connection refused", from the kernel`, // step 3
		`-> "Network is unreachable"`,              // step 4: the service is gone
		"routing continued with no agent running",  // step 5
		"Cleaned up",
	} {
		if !strings.Contains(string(out), want) {
			t.Errorf("demo output lacks %q:\n%s", want, out)
		}
	}
	if after := leftovers(t); after != before {
		t.Errorf("demo left objects behind:\nbefore: %s\nafter:  %s", before, after)
	}
}

// leftovers lists the demo's kinds of objects that exist now.
func leftovers(t *testing.T) string {
	t.Helper()
	var found []string
	for _, dir := range []string{"/sys/fs/bpf", "/run/netns", "/sys/class/net"} {
		entries, _ := os.ReadDir(dir)
		for _, e := range entries {
			// Only the demo's own names: other packages' tests run alongside.
			if strings.HasPrefix(e.Name(), "sluice-sim-") || strings.HasPrefix(e.Name(), "slbr") || strings.HasPrefix(e.Name(), "slv") {
				found = append(found, filepath.Join(dir, e.Name()))
			}
		}
	}
	mount, err := dataplane.Cgroup2Mount()
	if err != nil {
		t.Fatal(err)
	}
	cgroups, _ := filepath.Glob(filepath.Join(mount, "sluice-sim-*"))
	found = append(found, cgroups...)
	return strings.Join(found, " ")
}
