package demo_test

import (
	"os/exec"
	"path/filepath"
	"regexp"
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
	// Other packages' tests make clusters of their own alongside: only
	// the demo's, named by its cluster id, must be gone.
	m := regexp.MustCompile(`Simulated cluster ([0-9a-f]+),`).FindSubmatch(out)
	if m == nil {
		t.Fatalf("demo output names no simulated cluster:\n%s", out)
	}
	if left := leftovers(t, string(m[1])); left != "" {
		t.Errorf("demo left objects of its cluster %s behind: %s", m[1], left)
	}
}

// leftovers lists the objects of the simulated cluster id that exist now:
// pins, network namespaces, links and the cgroup.
func leftovers(t *testing.T, id string) string {
	t.Helper()
	mount, err := dataplane.Cgroup2Mount()
	if err != nil {
		t.Fatal(err)
	}
	var found []string
	for _, pattern := range []string{
		filepath.Join("/sys/fs/bpf", "sluice-sim-"+id+"-*"),
		filepath.Join("/run/netns", "sluice-"+id+"-*"),
		filepath.Join("/sys/class/net", "slbr"+id),
		filepath.Join("/sys/class/net", "slv"+id[:min(6, len(id))]+"*"),
		filepath.Join(mount, "sluice-sim-"+id),
	} {
		m, err := filepath.Glob(pattern)
		if err != nil {
			t.Fatal(err)
		}
		found = append(found, m...)
	}
	return strings.Join(found, " ")
}
