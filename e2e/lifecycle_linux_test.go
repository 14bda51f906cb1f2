package e2e_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	discoverygrpc "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	cachev3 "github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	serverv3 "github.com/envoyproxy/go-control-plane/pkg/server/v3"
	"google.golang.org/grpc"

	"github.com/sluice-mesh/sluice/dataplane"
	"github.com/sluice-mesh/sluice/e2e/cluster"
	"github.com/sluice-mesh/sluice/e2e/probe"
	"github.com/sluice-mesh/sluice/e2e/testenv"
	"github.com/sluice-mesh/sluice/sockops/observe"
	"github.com/sluice-mesh/sluice/xds/mesh"
)

// lifecycleMesh: one service, db, whose endpoint is on node a, and the
// workloads of node a; the cgroups of client and db go in.
const lifecycleMesh = `
workloads:
  - {name: client, namespace: shop, serviceAccount: client, node: a, cgroup: %s, ips: [10.244.1.10]}
  - {name: db, namespace: shop, serviceAccount: db, node: a, cgroup: %s, ips: [10.244.1.11]}
services:
  - name: db
    namespace: shop
    vips: [10.96.0.20]
    ports: [{port: 5432}]
    endpoints: [{address: 10.244.1.11}]
`

// lifecycleVIP is db's VIP:port.
const lifecycleVIP = "10.96.0.20:5432"

// lifecycleCluster makes node a with a client pod and the db pod serving,
// and the mesh file.
func lifecycleCluster(t *testing.T) (*cluster.Node, *cluster.Pod, string) {
	t.Helper()
	nodes, pods := policyCluster(t, []podSpec{{"a", "client", "10.244.1.10"}, {"a", "db", "10.244.1.11"}})
	serveDB(t, pods["db"])
	meshFile := filepath.Join(t.TempDir(), "mesh.yaml")
	data := fmt.Sprintf(lifecycleMesh, pods["client"].Cgroup, pods["db"].Cgroup)
	if err := os.WriteFile(meshFile, []byte(data), 0o600); err != nil {
		t.Fatal(err)
	}
	return nodes["a"], pods["client"], meshFile
}

// lifecycleAgent is an agent the test stops itself.
type lifecycleAgent struct {
	cmd    *exec.Cmd
	log    *syncBuffer
	exited chan struct{}
	err    error // how it exited, once exited is closed
}

// startLifecycleAgent starts `sluice agent` for node with args, the environment
// variables env added, and the command wrapped in wrap (e.g. unshare ...)
// if given. It is interrupted at the end of the test if still running.
func startLifecycleAgent(t *testing.T, bin string, node *cluster.Node, env, wrap []string, args ...string) *lifecycleAgent {
	t.Helper()
	argv := append(append(wrap, bin, "agent", "--cgroup", node.Cgroup, "--pin-dir", node.PinDir, "--node-id", "a"), args...)
	a := &lifecycleAgent{cmd: exec.Command(argv[0], argv[1:]...), log: &syncBuffer{}, exited: make(chan struct{})}
	a.cmd.Env = append(os.Environ(), env...)
	a.cmd.Stderr = a.log
	if err := a.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { a.err = a.cmd.Wait(); close(a.exited) }()
	t.Cleanup(func() {
		select {
		case <-a.exited:
		default:
			_ = a.cmd.Process.Signal(os.Interrupt)
			select {
			case <-a.exited:
			case <-time.After(15 * time.Second):
				t.Errorf("the agent did not stop within 15 s of SIGINT; killed it. Its log:\n%s", a.log.String())
				_ = a.cmd.Process.Kill()
				<-a.exited
			}
		}
	})
	return a
}

// stop sends SIGTERM and waits up to 30 s for the agent to exit; it
// returns how it exited.
func (a *lifecycleAgent) stop(t *testing.T) error {
	t.Helper()
	if err := a.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case <-a.exited:
		return a.err
	case <-time.After(30 * time.Second):
		t.Fatalf("the agent did not exit within 30 s of SIGTERM; its log:\n%s", a.log)
		return nil
	}
}

// dialLifecycleVIP dials db's VIP from the client pod.
func dialLifecycleVIP(t *testing.T, client *cluster.Pod) probe.Result {
	t.Helper()
	r, err := probe.Dial(client, lifecycleVIP)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// lifecycleStatus runs `sluice status -o json` against socket.
func lifecycleStatus(t *testing.T, bin, socket string) (observe.Status, error) {
	t.Helper()
	out, err := exec.Command(bin, "status", "--socket", socket, "-o", "json").Output()
	if err != nil {
		return observe.Status{}, err
	}
	var st observe.Status
	if err := json.Unmarshal(out, &st); err != nil {
		t.Fatalf("sluice status -o json: %v: %q", err, out)
	}
	return st, nil
}

// lifecycleGet returns the status code and body of a GET, 0 and the error if
// it fails.
func lifecycleGet(url string) (int, string) {
	resp, err := httpClient.Get(url)
	if err != nil {
		return 0, err.Error()
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(body)
}

// sluiceAttached lists the Sluice programs attached to cgroup.
func sluiceAttached(t *testing.T, cgroup string) []string {
	t.Helper()
	progs, err := dataplane.AttachedPrograms(cgroup)
	if err != nil {
		t.Fatal(err)
	}
	return progs
}

// pinnedCapacity returns the capacity of the map pinned at path.
func pinnedCapacity(t *testing.T, path string) uint32 {
	t.Helper()
	m, err := ebpf.LoadPinnedMap(path, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	return m.MaxEntries()
}

// TestAgentSettingsSources starts the agent with a settings file, an
// environment variable and command-line flags, and checks that each
// setting comes from where it should: the command line over the
// environment over the file. A file with an unknown key stops the agent
// before it touches anything, with an error naming the file and the key.
func TestAgentSettingsSources(t *testing.T) {
	testenv.RequirePrivileged(t)
	bin := buildSluice(t)
	node, client, meshFile := lifecycleCluster(t)
	dir := t.TempDir()
	settings := filepath.Join(dir, "agent.yaml")
	data := "# settings of the agent on node a\n" +
		"mesh: " + meshFile + "\n" +
		"node-name: from-file\n" + // the environment overrides it
		"max-services: 4096\n" +
		"max-backends: 2048\n" + // the command line overrides it
		"config-poll: 200ms\n" +
		"log-level: debug\n"
	if err := os.WriteFile(settings, []byte(data), 0o600); err != nil {
		t.Fatal(err)
	}
	socket := filepath.Join(dir, "agent.sock")
	metricsAddr := freePort(t)
	a := startLifecycleAgent(t, bin, node, []string{"SLUICE_CONFIG=" + settings, "SLUICE_NODE_NAME=from-env"}, nil,
		"--max-backends", "1024", "--socket", socket, "--metrics-addr", metricsAddr)
	logs := map[string]*syncBuffer{"a": a.log}

	waitFor(t, logs, "the VIP from the mesh file the settings file names was never routed", func() bool {
		return dialLifecycleVIP(t, client).Result == "ok"
	})
	st, err := lifecycleStatus(t, bin, socket)
	if err != nil {
		t.Fatalf("sluice status: %v; agent log:\n%s", err, a.log)
	}
	if st.Node != "from-env" {
		t.Errorf("node name %q, want from-env (SLUICE_NODE_NAME over the file)", st.Node)
	}
	capacity := map[string]int{}
	for _, m := range st.Maps {
		capacity[m.Name] = m.Capacity
	}
	if capacity["services"] != 4096 || capacity["backends"] != 1024 {
		t.Errorf("capacities %v, want services 4096 (file) and backends 1024 (command line over file)", capacity)
	}
	// The kernel's maps were made with them: two generations each.
	if got := pinnedCapacity(t, filepath.Join(node.PinDir, "sl_services")); got != 2*4096 {
		t.Errorf("pinned sl_services holds %d entries, want %d", got, 2*4096)
	}
	if got := pinnedCapacity(t, filepath.Join(node.PinDir, "sl_backends")); got != 2*1024 {
		t.Errorf("pinned sl_backends holds %d entries, want %d", got, 2*1024)
	}
	log := a.log.String()
	if !strings.Contains(log, "level=DEBUG") {
		t.Errorf("log-level debug from the file not in force; log:\n%s", log)
	}
	if !strings.Contains(log, "from_env=node-name") || !strings.Contains(log, "from_file=config-poll,log-level,max-services,mesh") {
		t.Errorf("the settings taken from the environment and the file are not logged as such; log:\n%s", log)
	}
	code, body := lifecycleGet("http://" + metricsAddr + "/readyz")
	if code != http.StatusOK || !strings.HasPrefix(body, "ready: state applied ") || !strings.Contains(body, "control plane connected") {
		t.Errorf("/readyz = %d %q, want 200 and the state applied with the control plane connected", code, body)
	}
	if err := a.stop(t); err != nil {
		t.Fatalf("agent exited with %v; log:\n%s", err, a.log)
	}

	t.Run("an unknown key stops the agent before it starts", func(t *testing.T) {
		bad := filepath.Join(dir, "bad.yaml")
		if err := os.WriteFile(bad, []byte("mesh: "+meshFile+"\nmax-servics: 10\n"), 0o600); err != nil {
			t.Fatal(err)
		}
		if err := dataplane.Teardown(node.PinDir); err != nil {
			t.Fatal(err)
		}
		b := startLifecycleAgent(t, bin, node, nil, nil, "--config", bad, "--socket", socket, "--metrics-addr", "")
		var exit *exec.ExitError
		select {
		case <-b.exited:
		case <-time.After(30 * time.Second):
			t.Fatalf("the agent kept running with a bad settings file; log:\n%s", b.log)
		}
		if !errors.As(b.err, &exit) || exit.ExitCode() == 0 {
			t.Errorf("agent exited with %v, want a non-zero status", b.err)
		}
		want := bad + ":2: max-servics: unknown setting; did you mean max-services?"
		if !strings.Contains(b.log.String(), want) {
			t.Errorf("the agent's error does not say %q; it said:\n%s", want, b.log)
		}
		if _, err := os.Stat(node.PinDir); !errors.Is(err, fs.ErrNotExist) {
			t.Errorf("the pin directory was made before the settings were checked: %v", err)
		}
	})
}

// TestAgentStopKeepsDatapath stops the agent with SIGTERM: it exits 0 and
// the VIP keeps being routed by the pinned datapath. `sluice uninstall`
// then removes it, finding the cgroup from the pinned links, and the VIP
// is no longer routed.
func TestAgentStopKeepsDatapath(t *testing.T) {
	testenv.RequirePrivileged(t)
	bin := buildSluice(t)
	node, client, meshFile := lifecycleCluster(t)
	socket := filepath.Join(t.TempDir(), "agent.sock")
	a := startLifecycleAgent(t, bin, node, nil, nil, "--mesh", meshFile, "--socket", socket, "--metrics-addr", "")
	waitFor(t, map[string]*syncBuffer{"a": a.log}, "the VIP was never routed", func() bool {
		return dialLifecycleVIP(t, client).Result == "ok"
	})
	if err := a.stop(t); err != nil {
		t.Fatalf("agent exited with %v after SIGTERM, want 0; log:\n%s", err, a.log)
	}
	if !strings.Contains(a.log.String(), "datapath left in place") {
		t.Errorf("the agent did not log that it left the datapath; log:\n%s", a.log)
	}
	if r := dialLifecycleVIP(t, client); r.Result != "ok" || r.Reply != "db" {
		t.Errorf("with no agent running the VIP gave %+v, want ok from db", r)
	}
	// The check sluice uninstall makes names what is there.
	err := dataplane.CheckRemoved(node.PinDir, node.Cgroup)
	if !errors.Is(err, dataplane.ErrNotRemoved) || !strings.Contains(err.Error(), "pin directory "+node.PinDir+" still exists") ||
		!strings.Contains(err.Error(), "link_connect4") || !strings.Contains(err.Error(), "program sl_connect4") {
		t.Errorf("with the datapath left in place, CheckRemoved = %v; want it to name the pins and the attached programs", err)
	}
	if _, err := os.Lstat(socket); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("the local API socket is still there after exit: %v", err)
	}

	// A cgroup the datapath is not attached to would prove nothing: refused,
	// nothing removed.
	wrong := client.Cgroup
	out, err := exec.Command(bin, "uninstall", "--pin-dir", node.PinDir, "--cgroup", wrong).CombinedOutput()
	if err == nil || !strings.Contains(string(out), "is attached to "+node.Cgroup+", not to "+wrong) {
		t.Errorf("sluice uninstall --cgroup %s: %v, %q; want a refusal naming the node's cgroup", wrong, err, out)
	}
	if r := dialLifecycleVIP(t, client); r.Result != "ok" {
		t.Errorf("the refused uninstall removed something: the VIP gave %+v", r)
	}

	out, err = exec.Command(bin, "uninstall", "--pin-dir", node.PinDir).CombinedOutput()
	if err != nil {
		t.Fatalf("sluice uninstall: %v\n%s", err, out)
	}
	if want := "no Sluice program is attached to " + node.Cgroup; !strings.Contains(string(out), want) {
		t.Errorf("sluice uninstall said %q, want it to name the node's cgroup: %q", out, want)
	}
	if _, err := os.Stat(node.PinDir); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("pin directory still there after sluice uninstall: %v", err)
	}
	if progs := sluiceAttached(t, node.Cgroup); len(progs) != 0 {
		t.Errorf("still attached after sluice uninstall: %v", progs)
	}
	if r := dialLifecycleVIP(t, client); r.Result == "ok" {
		t.Errorf("the VIP is still routed after sluice uninstall: %+v", r)
	}
	// Nothing left: uninstalling again succeeds and says so.
	if out, err := exec.Command(bin, "uninstall", "--pin-dir", node.PinDir, "--cgroup", node.Cgroup).CombinedOutput(); err != nil {
		t.Errorf("sluice uninstall with nothing installed: %v\n%s", err, out)
	}
}

// TestAgentUninstallOnExit stops an agent run with --uninstall-on-exit:
// the pins, the programs attached to the node's cgroup, the socket and the
// directory the agent made for it are gone, and the VIP is not routed.
func TestAgentUninstallOnExit(t *testing.T) {
	testenv.RequirePrivileged(t)
	bin := buildSluice(t)
	node, client, meshFile := lifecycleCluster(t)
	base := t.TempDir()
	socket := filepath.Join(base, "run", "sluice", "agent.sock") // run/sluice does not exist yet
	a := startLifecycleAgent(t, bin, node, nil, nil, "--mesh", meshFile, "--uninstall-on-exit", "--socket", socket, "--metrics-addr", "")
	waitFor(t, map[string]*syncBuffer{"a": a.log}, "the VIP was never routed", func() bool {
		return dialLifecycleVIP(t, client).Result == "ok"
	})
	if _, err := os.Lstat(socket); err != nil {
		t.Fatalf("no local API socket while the agent runs: %v", err)
	}
	if err := a.stop(t); err != nil {
		t.Fatalf("agent exited with %v after SIGTERM, want 0; log:\n%s", err, a.log)
	}
	if !strings.Contains(a.log.String(), "datapath removed (--uninstall-on-exit)") {
		t.Errorf("the agent did not log that it removed the datapath; log:\n%s", a.log)
	}
	if _, err := os.Stat(node.PinDir); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("pin directory still there: %v", err)
	}
	if progs := sluiceAttached(t, node.Cgroup); len(progs) != 0 {
		t.Errorf("still attached to the node's cgroup: %v", progs)
	}
	if r := dialLifecycleVIP(t, client); r.Result == "ok" {
		t.Errorf("the VIP is still routed: %+v", r)
	}
	if _, err := os.Lstat(filepath.Join(base, "run")); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("the socket's directory, made by the agent, is still there: %v", err)
	}
}

// TestAgentQuietSteadyState checks that an agent at the default log level
// says nothing while traffic flows and nothing changes.
func TestAgentQuietSteadyState(t *testing.T) {
	testenv.RequirePrivileged(t)
	bin := buildSluice(t)
	node, client, meshFile := lifecycleCluster(t)
	metricsAddr := freePort(t)
	a := startLifecycleAgent(t, bin, node, nil, nil, "--mesh", meshFile, "--node-name", "a", "--config-poll", "200ms",
		"--socket", filepath.Join(t.TempDir(), "agent.sock"), "--metrics-addr", metricsAddr)
	logs := map[string]*syncBuffer{"a": a.log}
	waitFor(t, logs, "the agent never became ready, routed and logged the state it applied", func() bool {
		code, _ := lifecycleGet("http://" + metricsAddr + "/readyz")
		return code == http.StatusOK && dialLifecycleVIP(t, client).Result == "ok" &&
			strings.Contains(a.log.String(), `msg="state applied" version.CDS=`)
	})
	before := a.log.String()
	if !strings.Contains(before, "workloads=2") {
		t.Errorf("the state applied does not count node a's two workloads; log:\n%s", before)
	}
	const steady = 5 * time.Second
	deadline := time.Now().Add(steady)
	dials := 0
	for time.Now().Before(deadline) {
		if r := dialLifecycleVIP(t, client); r.Result != "ok" {
			t.Fatalf("dial %d: %+v", dials, r)
		}
		dials++
		lifecycleGet("http://" + metricsAddr + "/metrics")
	}
	if after := a.log.String(); after != before {
		t.Errorf("the agent logged during %d connections and scrapes in steady state:\n%s\n(log before:\n%s)",
			dials, strings.TrimPrefix(after, before), before)
	}
	t.Logf("%d connections in %v; the agent's whole log:\n%s", dials, steady, before)
}

// TestAgentMountsBPFFS runs the agent in a private mount namespace where no
// bpffs is mounted: the agent mounts one, says so, and routes. Its pins
// live in that namespace only, so when the namespace ends (the agent was
// its only process) the datapath goes with it: nothing stays attached.
func TestAgentMountsBPFFS(t *testing.T) {
	testenv.RequirePrivileged(t)
	if _, err := exec.LookPath("unshare"); err != nil {
		t.Skip("needs unshare(1) from util-linux")
	}
	bin := buildSluice(t)
	node, client, meshFile := lifecycleCluster(t)
	// Unmount every bpffs stacked on /sys/fs/bpf, in the new namespace only.
	wrap := []string{"unshare", "--mount", "--propagation", "private", "sh", "-c",
		`while [ "$(stat -f -c %T /sys/fs/bpf)" = bpf_fs ]; do umount /sys/fs/bpf || exit 1; done; exec "$@"`, "sh"}
	a := startLifecycleAgent(t, bin, node, nil, wrap, "--mesh", meshFile,
		"--socket", filepath.Join(t.TempDir(), "agent.sock"), "--metrics-addr", "")
	waitFor(t, map[string]*syncBuffer{"a": a.log}, "the agent in its own mount namespace never routed", func() bool {
		return dialLifecycleVIP(t, client).Result == "ok"
	})
	if !strings.Contains(a.log.String(), "mounted bpffs") {
		t.Errorf("the agent did not log that it mounted bpffs; log:\n%s", a.log)
	}
	if _, err := os.Stat(node.PinDir); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("the pins appeared in the host's bpffs: %v", err)
	}
	if err := a.stop(t); err != nil {
		t.Fatalf("agent exited with %v, want 0; log:\n%s", err, a.log)
	}
	if err := dataplane.CheckRemoved(node.PinDir, node.Cgroup); err != nil {
		t.Errorf("after the mount namespace ended: %v", err)
	}
	if r := dialLifecycleVIP(t, client); r.Result == "ok" {
		t.Errorf("the VIP is still routed after the mount namespace ended: %+v", r)
	}
}

// TestAgentReadiness follows /readyz through an agent's life with an
// external control plane: 503 until the first state, 200 once it is
// applied, and still 200, saying that the control plane is unreachable,
// once the control plane is gone, while the last good state keeps routing.
func TestAgentReadiness(t *testing.T) {
	testenv.RequirePrivileged(t)
	bin := buildSluice(t)
	node, client, meshFile := lifecycleCluster(t)
	data, err := os.ReadFile(meshFile)
	if err != nil {
		t.Fatal(err)
	}
	m, err := mesh.Parse(meshFile, data)
	if err != nil {
		t.Fatal(err)
	}
	// A control plane the test can stop.
	cache := cachev3.NewSnapshotCache(true, meshHash{}, nil)
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer()
	discoverygrpc.RegisterAggregatedDiscoveryServiceServer(srv, serverv3.NewServer(context.Background(), cache, nil))
	go srv.Serve(lis)
	t.Cleanup(srv.Stop)

	metricsAddr := freePort(t)
	a := startLifecycleAgent(t, bin, node, nil, nil, "--xds", lis.Addr().String(),
		"--socket", filepath.Join(t.TempDir(), "agent.sock"), "--metrics-addr", metricsAddr)
	logs := map[string]*syncBuffer{"a": a.log}
	readyz := "http://" + metricsAddr + "/readyz"
	var code int
	var body string
	waitFor(t, logs, "/readyz never answered", func() bool { code, body = lifecycleGet(readyz); return code != 0 })
	if want := "not ready: waiting for the first xDS state from " + lis.Addr().String(); code != http.StatusServiceUnavailable || !strings.HasPrefix(body, want) {
		t.Errorf("before any state: /readyz = %d %q, want 503 %q", code, body, want)
	}
	if code, body := lifecycleGet("http://" + metricsAddr + "/healthz"); code != http.StatusOK {
		t.Errorf("/healthz = %d %q, want 200", code, body)
	}

	if err := cache.SetSnapshot(context.Background(), "mesh", snapshotOf("1", m.Resources())); err != nil {
		t.Fatal(err)
	}
	waitFor(t, logs, "the agent never became ready", func() bool { code, body = lifecycleGet(readyz); return code == http.StatusOK })
	if !strings.HasPrefix(body, "ready: state applied ") || !strings.Contains(body, "; control plane connected") {
		t.Errorf("ready: /readyz body %q, want the state applied and the control plane connected", body)
	}
	if r := dialLifecycleVIP(t, client); r.Result != "ok" {
		t.Fatalf("VIP once ready: %+v", r)
	}

	srv.Stop()
	waitFor(t, logs, "/readyz never said the control plane was lost", func() bool {
		code, body = lifecycleGet(readyz)
		return strings.Contains(body, "unreachable")
	})
	if code != http.StatusOK || !strings.HasPrefix(body, "ready: last good state in force (applied ") ||
		!strings.Contains(body, "; control plane unreachable since ") || !strings.Contains(body, ", reconnecting (") {
		t.Errorf("control plane gone: /readyz = %d %q, want 200 with the last good state in force and the control plane unreachable", code, body)
	}
	if r := dialLifecycleVIP(t, client); r.Result != "ok" {
		t.Errorf("VIP with the control plane gone: %+v, want ok", r)
	}
	t.Logf("/readyz with the control plane gone: %s", strings.TrimSpace(body))
}
