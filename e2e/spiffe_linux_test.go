package e2e_test

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"

	"github.com/sluice-mesh/sluice/dataplane"
	"github.com/sluice-mesh/sluice/e2e/cluster"
	"github.com/sluice-mesh/sluice/e2e/testenv"
	"github.com/sluice-mesh/sluice/identity/spiffetest"
)

// The agent binary authenticates to an external control plane with the
// SVID a SPIFFE Workload API gives it, and accepts the control plane by its
// SPIFFE ID: the state reaches the pinned maps. Told to expect another
// SPIFFE ID, it refuses that control plane and applies nothing.
func TestAgentSPIFFEControlPlane(t *testing.T) {
	testenv.RequirePrivileged(t)
	const agentID, cpID = "spiffe://example.org/ns/sluice/sa/agent", "spiffe://example.org/ns/sluice/sa/controlplane"
	bin := buildSluice(t)
	ca := spiffetest.NewCA(t, "example.org")
	api := spiffetest.StartWorkloadAPI(t, ca, agentID)
	srv := startXDSServer(t, grpc.Creds(credentials.NewTLS(ca.ServerTLS(t, cpID, nil))))
	const n = 3
	srv.set(t, snapshotOf("1", bigMesh(n, 2).Resources()))

	run := func(expect string) (pin string, log *syncBuffer, stop func()) {
		cg := testenv.Cgroup(t, "", testenv.UniqueName("sluice-spiffe-"))
		pin = testenv.PinDir(t)
		agent := exec.Command(bin, "agent", "--xds", srv.addr, "--xds-spiffe-socket", api.Addr, "--xds-spiffe-id", expect,
			"--cgroup", cg, "--pin-dir", pin, "--node-id", "spiffe", "--log-level", "warn",
			"--socket", filepath.Join(t.TempDir(), "agent.sock"), "--metrics-addr", "")
		log = &syncBuffer{}
		agent.Stderr = log
		if err := agent.Start(); err != nil {
			t.Fatal(err)
		}
		return pin, log, func() {
			_ = agent.Process.Signal(os.Interrupt)
			_ = agent.Wait()
			if err := dataplane.Teardown(pin); err != nil {
				t.Error(err)
			}
		}
	}

	pin, log, stop := run("spiffe://example.org/ns/sluice/sa/impostor")
	time.Sleep(2 * time.Second)
	if got := pinnedServices(pin); got != 0 {
		t.Errorf("an agent expecting another control plane applied %d service entries", got)
	}
	if !strings.Contains(log.String(), "unexpected ID") {
		t.Errorf("the agent's log does not say the control plane's ID was refused:\n%s", log)
	}
	stop()

	pin, log, stop = run(cpID)
	defer stop()
	deadline := time.Now().Add(30 * time.Second)
	for pinnedServices(pin) != 2*n { // both generations
		if time.Now().After(deadline) {
			t.Fatalf("the agent did not apply the state over SPIFFE mTLS (%d entries); its log:\n%s", pinnedServices(pin), log)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// syncBuffer holds an agent's log while tests read it.
type syncBuffer = cluster.LogBuffer
