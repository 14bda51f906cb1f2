package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/sluice-mesh/sluice/dataplane"
	"github.com/sluice-mesh/sluice/dataplane/model"
	kubetest "github.com/sluice-mesh/sluice/e2e/kube"
	"github.com/sluice-mesh/sluice/e2e/testenv"
	"github.com/sluice-mesh/sluice/identity"
	"github.com/sluice-mesh/sluice/identity/kube"
	"github.com/sluice-mesh/sluice/sockops/observe"
	"github.com/sluice-mesh/sluice/xds"
)

// TestMain runs the privileged tests (TestAgentKubernetes) in a network
// namespace of their own.
func TestMain(m *testing.M) { testenv.Main(m) }

// fakeDataplane writes as many entries per Apply as it is told to.
type fakeDataplane struct {
	mu      sync.Mutex
	written uint64
	next    uint64 // entries the next Apply writes
	fail    error
}

func (f *fakeDataplane) Apply(model.State) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.fail != nil {
		return f.fail
	}
	f.written += f.next
	return nil
}

func (f *fakeDataplane) EntriesWritten() uint64 {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.written
}

func (f *fakeDataplane) Status() dataplane.Status {
	return dataplane.Status{EntriesWritten: f.EntriesWritten()}
}

// Memory goes back to the kernel after a state that rewrote many entries,
// not after small changes, and not after a refused state.
func TestReleaseAfterLargeStates(t *testing.T) {
	dp := &fakeDataplane{}
	released := make(chan struct{}, 10)
	a := &releasingApplier{dp: dp, release: func() { released <- struct{}{} }}
	apply := func(entries uint64, fail error) error {
		dp.mu.Lock()
		dp.next, dp.fail = entries, fail
		dp.mu.Unlock()
		return a.Apply(model.State{})
	}
	waitReleased := func(want bool) {
		t.Helper()
		select {
		case <-released:
			if !want {
				t.Fatal("memory released after a small or refused state")
			}
		case <-time.After(200 * time.Millisecond):
			if want {
				t.Fatal("memory not released after a large state")
			}
		}
	}

	if err := apply(2*releaseAfter, nil); err != nil {
		t.Fatal(err)
	}
	waitReleased(true)
	if err := apply(12, nil); err != nil {
		t.Fatal(err)
	}
	waitReleased(false)
	refused := errors.New("capacity exhausted")
	if err := apply(3*releaseAfter, refused); !errors.Is(err, refused) {
		t.Fatalf("Apply error %v, want the dataplane's", err)
	}
	waitReleased(false)
	if err := apply(releaseAfter, nil); err != nil {
		t.Fatal(err)
	}
	waitReleased(true)
}

func TestCheckTLSFlags(t *testing.T) {
	ext := func(mod func(*agentFlags)) agentFlags {
		f := agentFlags{xdsServer: "cp:15010"}
		mod(&f)
		return f
	}
	for _, tc := range []struct {
		name    string
		flags   agentFlags
		mention string // "" for no error
	}{
		{"plain", ext(func(*agentFlags) {}), ""},
		{"TLS files", ext(func(f *agentFlags) { f.tls = xds.TLSFiles{CA: "ca.pem", Cert: "c.pem", Key: "k.pem"} }), ""},
		{"SPIFFE", ext(func(f *agentFlags) { f.spiffe = spiffeFlags{socket: "/run/spire.sock", server: "spiffe://example.org"} }), ""},
		{"a certificate without a CA", ext(func(f *agentFlags) { f.tls.Cert, f.tls.Key = "c.pem", "k.pem" }), "need --xds-ca"},
		{"a server name without a CA", ext(func(f *agentFlags) { f.tls.ServerName = "cp" }), "need --xds-ca"},
		{"files and SPIFFE", ext(func(f *agentFlags) {
			f.tls.CA = "ca.pem"
			f.spiffe = spiffeFlags{socket: "/run/spire.sock", server: "spiffe://example.org"}
		}), "not both"},
		{"a socket without an ID", ext(func(f *agentFlags) { f.spiffe.socket = "/run/spire.sock" }), "go together"},
		{"an ID without a socket", ext(func(f *agentFlags) { f.spiffe.server = "spiffe://example.org" }), "go together"},
		{"a bad ID", ext(func(f *agentFlags) { f.spiffe = spiffeFlags{socket: "/s", server: "example.org"} }), "--xds-spiffe-id"},
		{"TLS with --mesh", agentFlags{mesh: "mesh.yaml", tls: xds.TLSFiles{CA: "ca.pem"}}, "not to --mesh"},
		{"SPIFFE with --mesh", agentFlags{mesh: "mesh.yaml", spiffe: spiffeFlags{socket: "/s", server: "spiffe://example.org"}}, "not to --mesh"},
	} {
		err := checkTLSFlags(tc.flags)
		if tc.mention == "" && err != nil || tc.mention != "" && (err == nil || !strings.Contains(err.Error(), tc.mention)) {
			t.Errorf("%s: err = %v, want one mentioning %q", tc.name, err, tc.mention)
		}
	}
}

// The agent refuses conflicting workload sources before touching anything.
func TestAgentWorkloadFlags(t *testing.T) {
	for _, tc := range []struct {
		f    agentFlags
		want string
	}{
		{agentFlags{mesh: "mesh.yaml", workloads: "node.yaml", pollEvery: time.Second}, "with --mesh, list the workloads in the mesh file's workloads section"},
		{agentFlags{mesh: "mesh.yaml", pollEvery: 0}, "--config-poll 0s: give a positive interval"},
		{agentFlags{mesh: "mesh.yaml", pollEvery: time.Second, keepalive: 5 * time.Second}, "--xds-keepalive 5s: give at least 10s"},
	} {
		err := runAgent(t.Context(), tc.f, nil)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("runAgent(%+v) = %v, want an error containing %q", tc.f, err, tc.want)
		}
	}
}

// --kubernetes and its flags are refused, before anything is touched,
// when they contradict the other flags or cannot be used.
func TestAgentKubernetesFlags(t *testing.T) {
	t.Setenv("KUBERNETES_SERVICE_HOST", "") // not in a pod, whatever runs the test
	kubeAgent := func(mod func(*agentFlags)) agentFlags {
		f := agentFlags{xdsServer: "cp:15010", xdsMode: "delta", pollEvery: time.Second, keepalive: xds.MinKeepalive, flowBuffer: 10,
			node: xds.NodeInfo{NodeName: "n1"},
			kube: kubeFlags{enabled: true, trustDomain: identity.DefaultTrustDomain, nodeNameGiven: true}}
		mod(&f)
		return f
	}
	missing := filepath.Join(t.TempDir(), "no-kubeconfig")
	for _, tc := range []struct {
		name string
		f    agentFlags
		want string
	}{
		{"with --mesh", kubeAgent(func(f *agentFlags) { f.mesh, f.xdsServer = "mesh.yaml", "" }), "--kubernetes and --mesh exclude each other"},
		{"with --workloads", kubeAgent(func(f *agentFlags) { f.workloads = "node.yaml" }), "--kubernetes and --workloads exclude each other"},
		{"without --node-name", kubeAgent(func(f *agentFlags) { f.kube.nodeNameGiven = false }), "--kubernetes needs --node-name"},
		{"an empty --node-name", kubeAgent(func(f *agentFlags) { f.node.NodeName = "" }), "--kubernetes needs --node-name"},
		{"a bad trust domain", kubeAgent(func(f *agentFlags) { f.kube.trustDomain = "Example.org" }), `--trust-domain "Example.org" is not a SPIFFE trust domain`},
		{"without --xds", kubeAgent(func(f *agentFlags) { f.xdsServer = "" }), "give exactly one of --mesh"},
		{"--kubeconfig alone", agentFlags{xdsServer: "cp:15010", kube: kubeFlags{kubeconfig: "k.yaml", trustDomain: identity.DefaultTrustDomain}}, "apply with --kubernetes only"},
		{"--trust-domain alone", agentFlags{mesh: "mesh.yaml", kube: kubeFlags{trustDomain: "example.org"}}, "apply with --kubernetes only"},
		{"a missing kubeconfig", kubeAgent(func(f *agentFlags) { f.kube.kubeconfig = missing }), "--kubeconfig " + missing},
		{"not in a pod", kubeAgent(func(*agentFlags) {}), "no --kubeconfig given and not in a pod"},
	} {
		err := runAgent(t.Context(), tc.f, slog.New(slog.DiscardHandler))
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: runAgent = %v, want an error containing %q", tc.name, err, tc.want)
		}
	}
}

// --node-name counts as given from the environment too, and not when it
// is the host-name default.
func TestAgentKubernetesNodeName(t *testing.T) {
	t.Setenv("KUBERNETES_SERVICE_HOST", "")
	run := func(args ...string) error {
		cmd := newAgentCommand()
		cmd.SetArgs(args)
		cmd.SilenceUsage, cmd.SilenceErrors = true, true
		cmd.SetContext(t.Context())
		return cmd.Execute()
	}
	if err := run("--kubernetes", "--xds", "cp:15010"); err == nil || !strings.Contains(err.Error(), "--kubernetes needs --node-name") {
		t.Errorf("without --node-name: %v", err)
	}
	t.Setenv("SLUICE_NODE_NAME", "n1")
	if err := run("--kubernetes", "--xds", "cp:15010", "--log-level", "error"); err == nil || !strings.Contains(err.Error(), "not in a pod") {
		t.Errorf("--node-name from the environment: %v, want the in-cluster config's error", err)
	}
}

// Changed tells when the state in force was built with other workloads
// than the node has now: not before a state is applied, not when nothing
// changed, and when a local workload appears or the listed ones are
// replaced.
func TestIdentityApplierChanged(t *testing.T) {
	var locals []identity.Local
	listed := []identity.Workload{{Name: "a"}}
	a := &identityApplier{
		next:   &fakeDataplane{},
		locals: func() []identity.Local { return locals },
		listed: func() []identity.Workload { return listed },
		log:    slog.New(slog.DiscardHandler),
	}
	if a.Changed() {
		t.Error("changed before any state was applied")
	}
	if err := a.Apply(model.State{}); err != nil {
		t.Fatal(err)
	}
	if a.Changed() {
		t.Error("changed right after Apply")
	}
	locals = []identity.Local{{Workload: identity.Workload{SPIFFEID: "spiffe://td/ns/a/sa/b"}, CgroupID: 7}}
	if !a.Changed() {
		t.Error("a new local workload is not a change")
	}
	if err := a.Apply(model.State{}); err != nil {
		t.Fatal(err)
	}
	if a.Changed() {
		t.Error("changed after the state was applied with the new workload")
	}
	listed = []identity.Workload{{Name: "a"}} // equal, but a new listing
	if !a.Changed() {
		t.Error("a new listing is not a change")
	}
	// Workloads a state failed with are not tried again every poll.
	a.next = &fakeDataplane{fail: errors.New("map full")}
	if err := a.Apply(model.State{}); err == nil {
		t.Fatal("the failing dataplane did not fail")
	}
	if a.Changed() {
		t.Error("the workloads that just failed are a change to apply again")
	}
	locals = nil
	if !a.Changed() {
		t.Error("workloads other than the failed ones are not a change")
	}
}

func TestWorkloadFastPath(t *testing.T) {
	yes, no := true, false
	for _, tc := range []struct {
		own         *bool
		nodeDefault bool
		want        model.FastPath
	}{
		{nil, false, model.FastPathUnset},
		{nil, true, model.FastPathOn},
		{&yes, false, model.FastPathOn},
		{&no, true, model.FastPathOff},
		{&no, false, model.FastPathOff},
	} {
		if got := workloadFastPath(tc.own, tc.nodeDefault); got != tc.want {
			t.Errorf("own %v, node default %v: %v, want %v", tc.own != nil && *tc.own, tc.nodeDefault, got, tc.want)
		}
	}
}

// records is a slog handler that keeps each record as "LEVEL msg k=v ...".
type records struct {
	mu    sync.Mutex
	lines []string
}

func (r *records) Enabled(context.Context, slog.Level) bool { return true }
func (r *records) WithAttrs([]slog.Attr) slog.Handler       { return r }
func (r *records) WithGroup(string) slog.Handler            { return r }
func (r *records) Handle(_ context.Context, rec slog.Record) error {
	line := rec.Level.String() + " " + rec.Message
	rec.Attrs(func(a slog.Attr) bool {
		if a.Key != "at" {
			line += " " + a.String()
		}
		return true
	})
	r.mu.Lock()
	defer r.mu.Unlock()
	r.lines = append(r.lines, line)
	return nil
}

func (r *records) take() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	l := r.lines
	r.lines = nil
	return l
}

// The agent logs one line per state applied, with its versions, and one
// per workload that appears or goes; nothing when nothing changed.
func TestStateLog(t *testing.T) {
	rec := &records{}
	l := &stateLog{log: slog.New(rec)}
	local := func(name string, cgroup uint64) identity.Local {
		return identity.Local{Workload: identity.Workload{Namespace: "shop", Name: name, SPIFFEID: "spiffe://td/ns/shop/sa/" + name},
			CgroupID: cgroup, CgroupPath: "/cg/" + name}
	}
	counts := func() []any { return []any{"backends", 3} }
	v1 := map[string]string{"LDS": "1", "CDS": "1"}
	applied := time.Now()
	steps := []struct {
		name  string
		apply []identity.Local // nil: no apply
		st    xds.Status
		want  []string
	}{
		{"nothing applied yet", nil, xds.Status{}, nil},
		{"first state", []identity.Local{local("web", 1), local("db", 2)}, xds.Status{Applied: true, AppliedAt: applied, Versions: v1, Services: 2},
			[]string{"DEBUG workload appeared", "DEBUG workload appeared", "INFO state applied version=[CDS=1 LDS=1] services=2 backends=3"}},
		{"steady", nil, xds.Status{Applied: true, AppliedAt: applied, Versions: v1, Services: 2}, nil},
		{"web restarted, db gone", []identity.Local{local("web", 7)}, xds.Status{Applied: true, AppliedAt: applied, Versions: v1, Services: 2},
			[]string{"INFO workload appeared workload=shop/web", "INFO workload gone workload=shop/web cgroup=/cg/web", "INFO workload gone workload=shop/db cgroup=/cg/db",
				"INFO state applied version=[CDS=1 LDS=1] services=2 backends=3"}},
		{"new versions, nothing to apply", nil, xds.Status{Applied: true, AppliedAt: applied, Versions: map[string]string{"LDS": "2", "CDS": "2"}, Services: 2},
			[]string{"INFO state applied version=[CDS=2 LDS=2] services=2 backends=3"}},
	}
	for _, s := range steps {
		if s.apply != nil {
			l.applied(s.apply)
		}
		l.check(s.st, counts)
		got := rec.take()
		if len(got) != len(s.want) {
			t.Fatalf("%s: logged %q, want %d lines like %q", s.name, got, len(s.want), s.want)
		}
		// Workloads come from a map: compare regardless of order.
		slices.Sort(got)
		want := slices.Clone(s.want)
		slices.Sort(want)
		for i := range want {
			if !strings.HasPrefix(got[i], want[i]) {
				t.Errorf("%s: line %q, want it to start with %q", s.name, got[i], want[i])
			}
		}
	}
}

// TestWarnOnce: a workload left without identity is reported once, not on
// every poll, and again when the reason changes or after it was resolved.
func TestWarnOnce(t *testing.T) {
	var buf bytes.Buffer
	w := &warnOnce{log: slog.New(slog.NewTextHandler(&buf, nil))}
	round := func(errs ...string) int {
		before := strings.Count(buf.String(), "\n")
		problems := map[string]error{}
		for _, e := range errs {
			problems["shop/cart"] = errors.New(e)
		}
		w.round(problems)
		return strings.Count(buf.String(), "\n") - before
	}
	for i, c := range []struct {
		errs []string
		want int
	}{
		{[]string{"not cgroup2"}, 1},
		{[]string{"not cgroup2"}, 0},
		{[]string{"not cgroup2"}, 0},
		{[]string{"permission denied"}, 1},
		{nil, 0}, // resolved
		{[]string{"permission denied"}, 1},
	} {
		if got := round(c.errs...); got != c.want {
			t.Fatalf("round %d: %d lines, want %d:\n%s", i, got, c.want, buf.String())
		}
	}
}

// A state refused for a capacity names the flag that raises it, and stays
// a capacity error; every capacity named has a flag of the agent.
func TestCapacityHint(t *testing.T) {
	err := withCapacityHint(fmt.Errorf("apply: %w", &model.EntryError{Entry: "service \"web\"", Reason: "state has 6 services, capacity is 4", Class: model.ErrCapacity, Limit: "Services"}))
	if !strings.Contains(err.Error(), "raise --max-services") || !errors.Is(err, model.ErrCapacity) {
		t.Fatalf("%v (capacity class: %v)", err, errors.Is(err, model.ErrCapacity))
	}
	fixed := &model.EntryError{Entry: "service \"web\"", Reason: "70000 usable endpoints", Class: model.ErrCapacity}
	if got := withCapacityHint(fixed); got != error(fixed) {
		t.Fatalf("a fixed limit got a hint: %v", got)
	}
	fl := newAgentCommand().Flags()
	for field, name := range capacityFlags {
		if fl.Lookup(strings.TrimPrefix(name, "--")) == nil {
			t.Errorf("capacity %s: the agent has no flag %s", field, name)
		}
		if _, ok := reflect.TypeOf(dataplane.Capacity{}).FieldByName(field); !ok {
			t.Errorf("%s is not a field of dataplane.Capacity", field)
		}
	}
}

// TestAgentKubernetes runs the agent binary with --kubernetes against a
// real API server (e2e/kube: binaries built on first use, a quarter of an
// hour; run it with -timeout 30m) and an empty control plane, with pod
// cgroups made in kubelet's layouts under a cgroup of its own. The
// agent's local workloads follow the node's enrolled pods: one there
// before it starts, one created while it runs, one deleted.
func TestAgentKubernetes(t *testing.T) {
	testenv.RequirePrivileged(t) // loads BPF programs, makes cgroups
	cp := kubetest.StartForTest(t)
	client, err := kubernetes.NewForConfig(cp.Config())
	if err != nil {
		t.Fatal(err)
	}
	ctx := t.Context()
	if _, err := client.CoreV1().Nodes().Create(ctx, &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "n1"}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	enrolled := map[string]string{kube.MeshLabel: kube.MeshEnabled}
	if _, err := client.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "shop", Labels: enrolled}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := client.CoreV1().ServiceAccounts("shop").Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: "default"}}, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		t.Fatal(err)
	}

	mount, err := dataplane.Cgroup2Mount()
	if err != nil {
		t.Fatal(err)
	}
	id := fmt.Sprintf("%d-%d", os.Getpid(), time.Now().UnixNano()%1e6)
	root := filepath.Join(mount, "sluice-agent-kube-"+id)
	if err := os.Mkdir(root, 0o755); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { removeCgroups(t, root) })
	// pod creates a pod of node n1 with address ip, then its cgroup
	// (dir, relative to root, with the pod UID for %s).
	pod := func(name, ip, dir string) {
		t.Helper()
		p, err := client.CoreV1().Pods("shop").Create(ctx, &corev1.Pod{
			ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: "shop"},
			Spec:       corev1.PodSpec{NodeName: "n1", Containers: []corev1.Container{{Name: "app", Image: "registry.invalid/app:1"}}},
		}, metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		p.Status.Phase, p.Status.PodIP, p.Status.PodIPs = corev1.PodRunning, ip, []corev1.PodIP{{IP: ip}}
		if _, err := client.CoreV1().Pods("shop").UpdateStatus(ctx, p, metav1.UpdateOptions{}); err != nil {
			t.Fatal(err)
		}
		uid := string(p.UID)
		if strings.Contains(dir, ".slice") {
			uid = strings.ReplaceAll(uid, "-", "_")
		}
		if err := os.MkdirAll(filepath.Join(root, fmt.Sprintf(dir, uid)), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	pod("before", "10.244.1.10", "kubepods/besteffort/pod%s/"+strings.Repeat("ab", 32))

	dir := t.TempDir()
	bin := filepath.Join(dir, "sluice")
	if out, err := exec.Command("go", "build", "-o", bin, "github.com/sluice-mesh/sluice/cmd/sluice").CombinedOutput(); err != nil {
		t.Fatalf("build: %v\n%s", err, out)
	}
	mesh := filepath.Join(dir, "mesh.yaml")
	if err := os.WriteFile(mesh, []byte("trustDomain: cluster.local\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	xdsAddr := l.Addr().String()
	l.Close()
	start := func(args ...string) {
		t.Helper()
		cmd := exec.Command(bin, args...)
		cmd.Stdout, cmd.Stderr = logWriter{t}, logWriter{t}
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() {
			cmd.Process.Signal(syscall.SIGTERM)
			if err := cmd.Wait(); err != nil {
				t.Errorf("%s: %v", args[0], err)
			}
		})
	}
	start("controlplane", "--mesh", mesh, "--listen", xdsAddr)
	socket := filepath.Join(dir, "agent.sock")
	start("agent", "--xds", xdsAddr, "--kubernetes", "--kubeconfig", cp.Kubeconfig(), "--node-name", "n1",
		"--cgroup", root, "--pin-dir", "/sys/fs/bpf/sluice-agent-kube-"+id, "--socket", socket, "--metrics-addr", "",
		"--uninstall-on-exit")

	waitWorkloads := func(what string, want int) {
		t.Helper()
		deadline := time.Now().Add(2 * time.Minute)
		for {
			got, err := agentWorkloads(ctx, socket)
			if err == nil && got == want {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s: the agent has %d local workloads (%v), want %d", what, got, err, want)
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
	waitWorkloads("a pod there before the agent", 1)
	pod("after", "10.244.1.11", "kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod%s.slice/cri-containerd-"+strings.Repeat("cd", 32)+".scope")
	waitWorkloads("a pod created while the agent runs", 2)
	zero := int64(0)
	if err := client.CoreV1().Pods("shop").Delete(ctx, "before", metav1.DeleteOptions{GracePeriodSeconds: &zero}); err != nil {
		t.Fatal(err)
	}
	waitWorkloads("a pod deleted", 1)
}

// agentWorkloads returns the local workloads of the agent at socket.
func agentWorkloads(ctx context.Context, socket string) (int, error) {
	c, err := observe.Dial(socket)
	if err != nil {
		return 0, err
	}
	defer c.Close()
	st, err := c.Status(ctx)
	return st.Workloads, err
}

// removeCgroups removes the cgroup dir and those below it, deepest first.
func removeCgroups(t *testing.T, dir string) {
	var dirs []string
	filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err == nil && d.IsDir() {
			dirs = append(dirs, p)
		}
		return nil
	})
	for i := len(dirs) - 1; i >= 0; i-- {
		if err := os.Remove(dirs[i]); err != nil {
			t.Errorf("remove cgroup: %v", err)
		}
	}
}

// logWriter sends a process's output to t.Log.
type logWriter struct{ t *testing.T }

func (w logWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimSuffix(string(p), "\n"))
	return len(p), nil
}

func TestPeerProxies(t *testing.T) {
	a, b, c := netip.MustParseAddr("192.168.0.1"), netip.MustParseAddr("192.168.0.2"), netip.MustParseAddr("10.244.1.5")
	flagged := []netip.Addr{a}
	peers := []model.Peer{
		{Addr: b, Workload: &model.Workload{SPIFFEID: "spiffe://td/ns/sluice/sa/agent", L7Proxy: true}},
		{Addr: a, Workload: &model.Workload{SPIFFEID: "spiffe://td/ns/sluice/sa/agent", L7Proxy: true}},
		{Addr: c, Workload: &model.Workload{SPIFFEID: "spiffe://td/ns/shop/sa/batch"}},
	}
	got := peerProxies(flagged, peers)
	if want := []netip.Addr{a, b}; !slices.Equal(got, want) {
		t.Errorf("peerProxies = %v, want %v (flagged, then the directory's L7 proxies once, not its workloads)", got, want)
	}
	if len(flagged) != 1 || cap(flagged) != 1 {
		t.Errorf("the flag's list was changed: %v", flagged)
	}
	if got := peerProxies(nil, peers[2:]); got != nil {
		t.Errorf("no proxies: %v", got)
	}
}
