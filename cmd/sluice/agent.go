package main

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"maps"
	"net/netip"
	"os"
	"path/filepath"
	"runtime/debug"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/spf13/cobra"

	"github.com/sluice-mesh/sluice/dataplane"
	"github.com/sluice-mesh/sluice/dataplane/l7"
	"github.com/sluice-mesh/sluice/dataplane/model"
	"github.com/sluice-mesh/sluice/identity"
	"github.com/sluice-mesh/sluice/sockops"
	"github.com/sluice-mesh/sluice/sockops/flow"
	"github.com/sluice-mesh/sluice/sockops/metrics"
	"github.com/sluice-mesh/sluice/sockops/observe"
	"github.com/sluice-mesh/sluice/xds"
	"github.com/sluice-mesh/sluice/xds/controlplane"
)

// agentFlags are the flags of `sluice agent`.
type agentFlags struct {
	mesh        string
	xdsServer   string
	xdsMode     string
	tls         xds.TLSFiles
	spiffe      spiffeFlags
	pinDir      string
	cgroup      string
	node        xds.NodeInfo
	capacity    dataplane.Capacity
	pollEvery   time.Duration
	logLevel    string
	warmTimeout time.Duration
	keepalive   time.Duration
	workloads   string
	kube        kubeFlags
	fastPath    bool
	flows       bool
	flowBuffer  int
	metricsAddr string
	socket      string
	l7Proxy     []string // where the node's L7 proxy listens, host:port per family
	l7Peers     []string // other nodes' L7 proxies' addresses
	// uninstallOnExit removes the datapath when the agent exits instead
	// of leaving it in place.
	uninstallOnExit bool
}

func newAgentCommand() *cobra.Command {
	var f agentFlags
	var configFile string
	host, _ := os.Hostname()
	cmd := &cobra.Command{
		Use:   "agent",
		Short: "Run the node agent: program the kernel dataplane from xDS",
		Long: "Runs Sluice's node agent. It loads (or adopts) the kernel dataplane, attaches it to a cgroup\n" +
			"subtree, and programs it from an xDS control plane: an external one (--xds ADDR) or one\n" +
			"embedded in the agent and fed from a mesh file (--mesh mesh.yaml). On SIGTERM or SIGINT it\n" +
			"exits and leaves the datapath in place (`sluice uninstall` removes it), or removes it with\n" +
			"--uninstall-on-exit.\n\n" +
			"Every flag can also be set by an environment variable, SLUICE_ and the flag name upper-cased\n" +
			"with dashes as underscores (SLUICE_NODE_NAME), or by a key of the settings file --config\n" +
			"names (node-name: n1). The command line wins over the environment, the environment over\n" +
			"the file (docs/config.md).",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			origin, err := applySettings(cmd.Flags(), os.LookupEnv, os.ReadFile)
			if err != nil {
				return err
			}
			log, err := newLogger(f.logLevel)
			if err != nil {
				return err
			}
			origin.log(log)
			f.kube.nodeNameGiven = cmd.Flags().Changed("node-name")
			return runAgent(cmd.Context(), f, log)
		},
	}
	fl := cmd.Flags()
	fl.StringVar(&configFile, configFlag, "", "settings file: a YAML mapping of these flags' long names to values (also SLUICE_CONFIG)")
	fl.StringVar(&f.mesh, "mesh", "", "mesh file served by an embedded control plane (standalone mode)")
	fl.StringVar(&f.xdsServer, "xds", "", "external xDS control plane, host:port or unix:///path")
	fl.StringVar(&f.xdsMode, "xds-mode", string(xds.ModeDelta), "xDS protocol variant: delta or sotw")
	fl.StringVar(&f.tls.CA, "xds-ca", "", "CA bundle (PEM) to verify the control plane; enables TLS")
	fl.StringVar(&f.tls.Cert, "xds-cert", "", "client certificate (PEM) for mTLS to the control plane")
	fl.StringVar(&f.tls.Key, "xds-key", "", "client key (PEM) for mTLS to the control plane")
	fl.StringVar(&f.tls.ServerName, "xds-server-name", "", "name expected in the control plane's certificate (default: its host)")
	fl.StringVar(&f.spiffe.socket, "xds-spiffe-socket", "", "SPIFFE Workload API socket (path or unix:///path): mTLS to the control plane with the agent's X.509 SVID")
	fl.StringVar(&f.spiffe.server, "xds-spiffe-id", "", "SPIFFE ID the control plane's SVID must have, or spiffe://<trust-domain> for any of it (with --xds-spiffe-socket)")
	fl.DurationVar(&f.spiffe.wait, "xds-spiffe-wait", identity.DefaultSVIDWait, "how long to wait at start for an SVID from the Workload API")
	fl.StringVar(&f.pinDir, "pin-dir", dataplane.DefaultBPFFS+"/sluice", "bpffs directory for the dataplane's pinned programs and maps")
	fl.StringVar(&f.cgroup, "cgroup", "", "cgroup2 directory whose subtree is routed (default: the cgroup2 root)")
	fl.StringVar(&f.workloads, "workloads", "", "with --xds: file listing this node's workloads, their cgroups and identities (docs/identity.md); with --mesh they are in the mesh file")
	fl.BoolVar(&f.kube.enabled, "kubernetes", false, "with --xds: this node's workloads are its pods enrolled in the mesh, from the Kubernetes API (needs --node-name; not with --workloads)")
	fl.StringVar(&f.kube.kubeconfig, "kubeconfig", "", "with --kubernetes: kubeconfig file to reach the API server (default: the in-cluster config)")
	fl.StringVar(&f.kube.trustDomain, "trust-domain", identity.DefaultTrustDomain, "with --kubernetes: trust domain of the pods' SPIFFE IDs")
	fl.StringVar(&f.node.ID, "node-id", host, "xDS node id")
	fl.StringVar(&f.node.NodeName, "node-name", host, "this node's name (xDS node metadata node_name)")
	fl.StringVar(&f.node.Cluster, "cluster", "sluice", "xDS node cluster")
	fl.StringVar(&f.node.Locality.Region, "region", "", "xDS node locality: region")
	fl.StringVar(&f.node.Locality.Zone, "zone", "", "xDS node locality: zone")
	fl.StringVar(&f.node.Locality.SubZone, "subzone", "", "xDS node locality: sub-zone")
	fl.IntVar(&f.capacity.Services, "max-services", dataplane.DefaultCapacity.Services, "service map capacity (VIP:port/protocol entries)")
	fl.IntVar(&f.capacity.Backends, "max-backends", dataplane.DefaultCapacity.Backends, "backend map capacity (usable endpoints over all services)")
	fl.IntVar(&f.capacity.UDPReverse, "max-udp-reverse", dataplane.DefaultCapacity.UDPReverse, "UDP reverse-translation map capacity")
	fl.IntVar(&f.capacity.Workloads, "max-workloads", dataplane.DefaultCapacity.Workloads, "local workload (cgroup) map capacity")
	fl.IntVar(&f.capacity.Addresses, "max-workload-addresses", dataplane.DefaultCapacity.Addresses, "workload address → identity map capacity")
	fl.IntVar(&f.capacity.PolicyDests, "max-policy-destinations", dataplane.DefaultCapacity.PolicyDests, "endpoints with a policy")
	fl.IntVar(&f.capacity.Verdicts, "max-verdicts", dataplane.DefaultCapacity.Verdicts, "policy verdict map capacity")
	fl.IntVar(&f.capacity.Classes, "max-policy-source-classes", dataplane.DefaultCapacity.Classes, "policy source address classes (CIDRs) over all policies")
	fl.IntVar(&f.capacity.Rules, "max-policy-rules", dataplane.DefaultCapacity.Rules, "policy rules with their own counters")
	fl.IntVar(&f.capacity.FastPath, "max-fast-path", dataplane.DefaultCapacity.FastPath, "sockets the same-node fast path can hold (two per connection)")
	fl.BoolVar(&f.fastPath, "fast-path", false, "put connections between this node's workloads on the same-node fast path unless a workload or service says otherwise (docs/fastpath.md: not for workloads that read sockets with splice(2))")
	fl.BoolVar(&f.flows, "flows", true, "record connection open and close flows (deny flows are always recorded)")
	fl.IntVar(&f.flowBuffer, "flow-buffer", 8192, "most recent flows kept in memory for `sluice observe`")
	fl.StringVar(&f.metricsAddr, "metrics-addr", "127.0.0.1:9464", "address for /metrics, /healthz and /readyz; empty for none")
	fl.StringVar(&f.socket, "socket", observe.DefaultSocket, "unix socket of the local API (`sluice observe`, `sluice status`), readable by root only")
	fl.StringSliceVar(&f.l7Proxy, "l7-proxy", nil, "where this node's L7 proxy (`sluice proxy`) listens, IPv4:port and/or [IPv6]:port: connections to L7 services go there (docs/l7.md); none: they are refused")
	fl.StringSliceVar(&f.l7Peers, "l7-peer-proxies", nil, "addresses other nodes' L7 proxies connect from (their --l7-proxy addresses): connections from them are trusted to carry their clients' identities (docs/l7.md)")
	fl.DurationVar(&f.pollEvery, "config-poll", time.Second, "how often the mesh file is checked for edits, and local workloads' cgroups for changes")
	fl.DurationVar(&f.warmTimeout, "warming-timeout", 15*time.Second, "how long to wait for resources listeners need before applying without them")
	fl.DurationVar(&f.keepalive, "xds-keepalive", xds.DefaultKeepalive, "ping the control plane after this long without traffic (at least 10s; a server closes the connection on pings more frequent than its policy allows, and gRPC servers allow one per 5m by default)")
	fl.StringVar(&f.logLevel, "log-level", "info", "debug, info, warn or error")
	fl.BoolVar(&f.uninstallOnExit, "uninstall-on-exit", false, "on exit, remove the datapath (as `sluice uninstall` does) instead of leaving it in place")
	return cmd
}

func runAgent(ctx context.Context, f agentFlags, log *slog.Logger) (err error) {
	if err := checkKubeFlags(f); err != nil {
		return err
	}
	if (f.mesh == "") == (f.xdsServer == "") {
		return errors.New("give exactly one of --mesh (embedded control plane fed from a mesh file) or --xds (external control plane)")
	}
	if f.mesh != "" && f.workloads != "" {
		return errors.New("--workloads is for an external control plane; with --mesh, list the workloads in the mesh file's workloads section")
	}
	if f.pollEvery <= 0 {
		return fmt.Errorf("--config-poll %v: give a positive interval", f.pollEvery)
	}
	if f.keepalive < xds.MinKeepalive {
		return fmt.Errorf("--xds-keepalive %v: give at least %v (gRPC's shortest ping interval)", f.keepalive, xds.MinKeepalive)
	}
	if f.flowBuffer <= 0 {
		return fmt.Errorf("--flow-buffer %d: give a positive number of flows", f.flowBuffer)
	}
	mode, err := xds.ParseMode(f.xdsMode)
	if err != nil {
		return err
	}
	proxy, err := parseL7Proxy("--l7-proxy", f.l7Proxy)
	if err != nil {
		return err
	}
	var peers []netip.Addr
	for _, s := range f.l7Peers {
		a, err := netip.ParseAddr(s)
		if err != nil || a.Zone() != "" || a.IsUnspecified() {
			return fmt.Errorf("--l7-peer-proxies %q: want an IP address (a node's L7 proxy address, no port)", s)
		}
		peers = append(peers, a.Unmap())
	}
	f.node.Version = version()

	// Check the configuration sources before touching the kernel.
	if err := checkTLSFlags(f); err != nil {
		return err
	}
	server, serverName := f.xdsServer, f.xdsServer
	var cp *controlplane.Server
	if f.mesh != "" {
		serverName = "the embedded control plane (" + f.mesh + ")"
		if cp, err = controlplane.New(controlplane.Options{ConfigPath: f.mesh, PollInterval: f.pollEvery, Logger: log.With("component", "controlplane")}); err != nil {
			return err
		}
	}
	opts := xds.Options{Server: server, Node: f.node, Mode: mode, Logger: log.With("component", "xds"), WarmingTimeout: f.warmTimeout,
		Keepalive: f.keepalive, CollectWhenIdle: xds.IdleCollectAfter}
	if f.tls.CA != "" {
		if opts.TLS, err = xds.TLSConfig(f.tls); err != nil {
			return err
		}
	}
	if f.spiffe.socket != "" {
		src, err := identity.OpenSVIDSource(ctx, f.spiffe.socket, f.spiffe.wait)
		if err != nil {
			return err
		}
		defer src.Close()
		if opts.TLS, err = src.ClientTLS(f.spiffe.server); err != nil {
			return err
		}
		id, _ := src.ID()
		log.Info("authenticating to the control plane with the SVID from the Workload API", "spiffe_id", id.String(), "control_plane", f.spiffe.server)
	}

	mount, err := dataplane.Cgroup2Mount()
	if err != nil {
		return err
	}
	if f.cgroup == "" {
		f.cgroup = mount
	}
	// workloads lists this node's workloads among others; listed, the
	// workloads of every node the agent knows of besides endpoints.
	workloads := func() []identity.Workload { return nil }
	listed := workloads
	if f.workloads != "" {
		data, err := os.ReadFile(f.workloads)
		if err != nil {
			return fmt.Errorf("--workloads: %w", err)
		}
		ws, err := identity.ParseWorkloads(f.workloads, data)
		if err != nil {
			return err
		}
		workloads = func() []identity.Workload { return ws }
	}
	if cp != nil {
		// Every agent fed from the file knows every node's workloads.
		workloads, listed = cp.Workloads, cp.Workloads
	}
	// kubeChanges receives when the node's pods change; nil (never) without --kubernetes.
	var kubeChanges <-chan struct{}
	if f.kube.enabled {
		pods, stop, err := watchPods(ctx, f.kube, f.node.NodeName, f.cgroup, log.With("component", "kubernetes"))
		if err != nil {
			return err
		}
		defer stop()
		workloads, kubeChanges = pods.Workloads, pods.Changes()
	}
	if mounted, err := dataplane.MountBPFFS(f.pinDir); err != nil {
		return err
	} else if mounted {
		log.Info("mounted bpffs: none was mounted", "at", dataplane.DefaultBPFFS)
	}
	dp, err := dataplane.Open(dataplane.Options{PinDir: f.pinDir, Cgroup: f.cgroup, Capacity: f.capacity, Logger: log.With("component", "dataplane")})
	if err != nil {
		return err
	}
	// Runs last, once nothing else uses the dataplane.
	defer func() {
		if !f.uninstallOnExit {
			// Closing keeps the pins: routing continues while no agent runs.
			dp.Close()
			log.Info("agent stopped; datapath left in place", "pin_dir", f.pinDir)
			return
		}
		if terr := dp.Teardown(); terr != nil {
			log.Error("agent stopped; removing the datapath (--uninstall-on-exit) failed", "err", terr)
			err = errors.Join(err, fmt.Errorf("--uninstall-on-exit: %w", terr))
			return
		}
		log.Info("agent stopped; datapath removed (--uninstall-on-exit)", "pin_dir", f.pinDir, "cgroup", f.cgroup)
	}()
	warn := &warnOnce{log: log.With("component", "identity")}
	feed := l7.NewFeed()
	ids := &identityApplier{
		next: &l7Applier{proxy: proxy, peers: peers, feed: feed, next: &releasingApplier{dp: dp, release: debug.FreeOSMemory}},
		locals: func() []identity.Local {
			return resolveWorkloads(workloads(), f.node.NodeName, mount, f.fastPath, warn)
		},
		listed: listed,
		log:    log.With("component", "identity"),
	}
	opts.Applier = ids
	if err := dp.SetFlows(f.flows); err != nil {
		return err
	}
	enricher := sockops.NewEnricher(f.node.NodeName, monoToWall)
	changes := &stateLog{log: log}
	store := flow.NewStore(f.flowBuffer)
	src := &statusSource{node: f.node.NodeName, started: time.Now(), fastPath: f.fastPath,
		capacity: f.capacity.WithDefaults(), dp: dp, store: store, ids: ids, log: log}
	mets := metrics.New(f.node.NodeName, src.status)
	sink := &flowSink{enricher: enricher, store: store, metrics: mets, log: log.With("component", "policy"), hold: f.flowBuffer}
	src.sink = sink
	ids.onApplied = func(s model.State, locals []identity.Local, listed []identity.Workload) {
		ws := slices.Clone(listed)
		for _, p := range s.Peers {
			w := p.Workload
			ws = append(ws, identity.Workload{Name: w.Name, Namespace: w.Namespace, ServiceAccount: w.ServiceAccount,
				SPIFFEID: w.SPIFFEID, Node: w.Node, Addrs: []netip.Addr{p.Addr}})
		}
		for _, l := range locals {
			ws = append(ws, l.Workload)
		}
		enricher.SetState(s.Services, ws)
		sink.stateKnown()
		changes.applied(locals)
	}

	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	cpDone := make(chan error, 1)
	// Runs last: the sockets are gone by then.
	defer createdDirs(filepath.Dir(f.socket))()
	if cp != nil {
		// The embedded control plane serves the agent over the same xDS
		// path an external one would, on a unix socket beside the local
		// API's, root's only. A killed agent's socket is replaced by the
		// next one; closing the listener removes it.
		sock := f.socket + ".xds"
		lis, err := observe.Listen(sock)
		if err != nil {
			return fmt.Errorf("embedded control plane: %w", err)
		}
		cpStopped := make(chan struct{})
		go func() {
			defer close(cpStopped)
			cpDone <- cp.Serve(ctx, lis)
		}()
		defer func() { cancel(); <-cpStopped }()
		opts.Server = "unix://" + sock
	}
	client, err := xds.New(opts)
	if err != nil {
		return err
	}
	src.client = client
	ready := func() (bool, string) { return readiness(client.Status(), serverName) }
	api := observe.NewServer(store, src.status, log.With("component", "observe"))
	api.Handle("GET "+l7.FeedPath, feed)
	api.Handle("POST "+l7.RecordsPath, l7.RecordsHandler(sink.requests))
	waitLocal, err := serveLocal(ctx, f.socket, f.metricsAddr, api, mets, ready, log)
	if err != nil {
		return err
	}
	defer waitLocal() // closing the listener removes the socket
	enforceDone := make(chan struct{})
	go func() {
		defer close(enforceDone)
		enforce(ctx, dp, f.cgroup, sink.observe, log.With("component", "policy"))
	}()
	refreshDone := make(chan struct{})
	go func() {
		defer close(refreshDone)
		t := time.NewTicker(f.pollEvery)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-kubeChanges:
				// Informer events come in bursts; Changed decides
				// whether the workloads really differ.
				if ids.Changed() {
					client.Reapply()
				}
			case <-t.C:
				if ids.Changed() {
					client.Reapply()
				}
				changes.check(client.Status(), func() []any {
					workloads, policies := ids.counts()
					return []any{"backends", dp.Status().Backends, "workloads", workloads, "policies", policies}
				})
			}
		}
	}()
	defer func() { cancel(); <-enforceDone; <-refreshDone }()
	log.Info("agent started", "node", f.node.ID, "cgroup", f.cgroup, "pin_dir", f.pinDir, "xds", opts.Server, "mode", mode)
	err = client.Run(ctx)
	cancel()
	if cp != nil {
		if cerr := <-cpDone; cerr != nil && !errors.Is(cerr, context.Canceled) {
			err = errors.Join(err, cerr)
		}
	}
	return err
}

// readiness says whether the agent is ready, and why, for /readyz: ready
// once a state from the control plane is in force (traffic is routed by
// it), even while the control plane is unreachable. server names the
// control plane.
func readiness(st xds.Status, server string) (bool, string) {
	const stamp = time.RFC3339
	if !st.Applied {
		why := "not ready: waiting for the first xDS state from " + server
		switch {
		case st.LastNACK != nil:
			why += fmt.Sprintf(" (last response rejected: %s)", st.LastNACK.Error)
		case st.Warming:
			why += fmt.Sprintf(" (waiting for %s)", strings.Join(st.Missing, ", "))
		case !st.Connected && st.LastError != "":
			why += fmt.Sprintf(" (not connected: %s)", st.LastError)
		}
		return false, why
	}
	if st.Connected {
		return true, fmt.Sprintf("ready: state applied %s; control plane connected", st.AppliedAt.Format(stamp))
	}
	why := fmt.Sprintf("ready: last good state in force (applied %s); control plane unreachable since %s, reconnecting",
		st.AppliedAt.Format(stamp), st.ConnectedSince.Format(stamp))
	if st.LastError != "" {
		why += " (" + st.LastError + ")"
	}
	return true, why
}

// createdDirs notes which of dir and its parents do not exist yet and
// returns a function that removes those of them that are empty then,
// deepest first: the directories the agent creates for its socket go
// when it exits, those it found stay.
func createdDirs(dir string) (remove func()) {
	var missing []string
	for d := filepath.Clean(dir); ; d = filepath.Dir(d) {
		if _, err := os.Lstat(d); !errors.Is(err, fs.ErrNotExist) {
			break
		}
		missing = append(missing, d)
		if filepath.Dir(d) == d {
			break
		}
	}
	return func() {
		for _, d := range missing {
			if os.Remove(d) != nil {
				return // not empty (or not ours any more): its parents are not empty either
			}
		}
	}
}

// stateLog logs the changes of the agent's state that matter, one line
// each: a state applied, with the xDS versions it came with and what it
// holds, and local workloads appearing and going. The xDS client records
// the versions only once a state is applied and acknowledged, so the
// state's line is written at the agent's next periodic check (check),
// with the time it was applied.
type stateLog struct {
	log *slog.Logger

	mu sync.Mutex
	// Guarded by mu.
	pending   bool                           // a state was applied since the last check
	workloads map[workloadKey]identity.Local // local workloads in force; nil before the first state
	versions  map[string]string              // xDS versions of the last line
}

// workloadKey tells a local workload's incarnations apart: a restarted pod
// has a new cgroup.
type workloadKey struct {
	namespace, name string
	cgroup          uint64
}

// applied records a state applied with the local workloads locals, and
// logs those that appeared or went since the last one. The workloads of
// the first state are logged at debug level only: the state's line counts
// them.
func (l *stateLog) applied(locals []identity.Local) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.pending = true
	first := l.workloads == nil
	now := make(map[workloadKey]identity.Local, len(locals))
	for _, w := range locals {
		now[workloadKey{w.Workload.Namespace, w.Workload.Name, w.CgroupID}] = w
	}
	level := slog.LevelInfo
	if first {
		level = slog.LevelDebug
	}
	for k, w := range now {
		if _, ok := l.workloads[k]; !ok {
			l.log.Log(context.Background(), level, "workload appeared", "workload", k.namespace+"/"+k.name,
				"identity", w.Workload.SPIFFEID, "cgroup", w.CgroupPath, "addresses", w.Workload.Addrs)
		}
	}
	for k, w := range l.workloads {
		if _, ok := now[k]; !ok {
			l.log.Info("workload gone", "workload", k.namespace+"/"+k.name, "cgroup", w.CgroupPath)
		}
	}
	l.workloads = now
}

// check logs a line for the state in force if one was applied, or the
// xDS versions changed, since the last check. counts returns attributes
// that describe the state.
func (l *stateLog) check(st xds.Status, counts func() []any) {
	l.mu.Lock()
	changed := st.Applied && (l.pending || !maps.Equal(st.Versions, l.versions))
	l.pending = false
	if changed {
		l.versions = st.Versions
	}
	l.mu.Unlock()
	if !changed {
		return
	}
	var versions []any
	for _, t := range slices.Sorted(maps.Keys(st.Versions)) {
		versions = append(versions, t, st.Versions[t])
	}
	attrs := append([]any{slog.Group("version", versions...), "services", st.Services}, counts()...)
	l.log.Info("state applied", append(attrs, "at", st.AppliedAt.Format(time.RFC3339Nano))...)
}

// spiffeFlags configure mTLS to the control plane with an SVID from a
// SPIFFE Workload API.
type spiffeFlags struct {
	socket, server string
	wait           time.Duration
}

// checkTLSFlags refuses TLS flags that would be ignored or contradict
// each other.
func checkTLSFlags(f agentFlags) error {
	files := f.tls != xds.TLSFiles{}
	spiffe := f.spiffe.socket != "" || f.spiffe.server != ""
	switch {
	case f.mesh != "" && (files || spiffe):
		return errors.New("--xds-ca, --xds-cert, --xds-key, --xds-server-name and --xds-spiffe-* apply to an external control plane (--xds), not to --mesh")
	case files && spiffe:
		return errors.New("give either --xds-ca (with --xds-cert and --xds-key for mTLS) or --xds-spiffe-socket and --xds-spiffe-id, not both")
	case files && f.tls.CA == "":
		return errors.New("--xds-cert, --xds-key and --xds-server-name need --xds-ca, the CA that signs the control plane's certificate")
	case spiffe && (f.spiffe.socket == "" || f.spiffe.server == ""):
		return errors.New("--xds-spiffe-socket and --xds-spiffe-id go together: the agent's SVID comes from the socket, the control plane must have the SPIFFE ID")
	case spiffe:
		if _, err := identity.Authorizer(f.spiffe.server); err != nil {
			return fmt.Errorf("--xds-spiffe-id: %w", err)
		}
	}
	return nil
}

func newLogger(level string) (*slog.Logger, error) {
	var l slog.Level
	if err := l.UnmarshalText([]byte(level)); err != nil {
		return nil, fmt.Errorf("--log-level %q: want debug, info, warn or error", level)
	}
	return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: l})), nil
}

// releaseAfter is how many map entries a state must write for the agent to
// hand the memory its translation needed back to the kernel.
const releaseAfter = 10000

// releasingApplier applies states to the dataplane. After one that rewrote
// much of the maps (the first state, a large change), it returns the memory
// no longer in use to the kernel in the background: decoding and
// translating a large state needs far more than holding it, and the Go
// runtime would otherwise keep the difference for minutes.
type releasingApplier struct {
	dp interface {
		Apply(model.State) error
		EntriesWritten() uint64
		Status() dataplane.Status // waits until the standby generation is written
	}
	release   func() // debug.FreeOSMemory
	releasing atomic.Bool
}

func (a *releasingApplier) Apply(s model.State) error {
	before := a.dp.EntriesWritten()
	if err := a.dp.Apply(s); err != nil {
		return withCapacityHint(err)
	}
	if a.dp.EntriesWritten()-before >= releaseAfter && !a.releasing.Swap(true) {
		go func() {
			defer a.releasing.Store(false)
			a.dp.Status() // the standby generation's update allocates too
			a.release()
		}()
	}
	return nil
}

// capacityFlags names the flag that sets each dataplane capacity.
var capacityFlags = map[string]string{
	"Services": "--max-services", "Backends": "--max-backends", "Workloads": "--max-workloads",
	"Addresses": "--max-workload-addresses", "PolicyDests": "--max-policy-destinations",
	"Classes": "--max-policy-source-classes", "Verdicts": "--max-verdicts", "Rules": "--max-policy-rules",
}

// withCapacityHint adds to a state refused for a capacity the flag that
// raises it, keeping the error's class (a capacity NACK).
func withCapacityHint(err error) error {
	var e *model.EntryError
	if !errors.As(err, &e) || e.Limit == "" {
		return err
	}
	flag, ok := capacityFlags[e.Limit]
	if !ok {
		return err
	}
	return fmt.Errorf("%w; raise %s (maps keep the size they were made with: run `sluice uninstall`, then start the agent with the new value)", err, flag)
}

// parseL7Proxy reads the L7 proxy's addresses from flag (the agent's
// --l7-proxy, the proxy's --listen): at most one per family.
func parseL7Proxy(flag string, specs []string) (dataplane.L7Proxy, error) {
	var p dataplane.L7Proxy
	for _, s := range specs {
		ap, err := netip.ParseAddrPort(s)
		if err != nil {
			return nil, fmt.Errorf("%s %q: want IPv4:port or [IPv6]:port: %v", flag, s, err)
		}
		ap = netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
		if ap.Port() == 0 || ap.Addr().IsUnspecified() || ap.Addr().Zone() != "" {
			return nil, fmt.Errorf("%s %q: give the proxy's own address and port (not 0.0.0.0, [::], a zone or port 0): clients are sent there", flag, s)
		}
		if prev, dup := p.For(ap.Addr()); dup {
			return nil, fmt.Errorf("%s %q: %s is already the proxy's address of that family; give one per family", flag, s, prev)
		}
		p = append(p, ap)
	}
	return p, nil
}

// peerProxies returns the L7 proxies the agent trusts to speak for their
// clients besides its own: those of --l7-peer-proxies and those the control
// plane lists in its workload directories (model.Workload.L7Proxy).
func peerProxies(flagged []netip.Addr, peers []model.Peer) []netip.Addr {
	out := flagged
	for i := range peers {
		if w := peers[i].Workload; w != nil && w.L7Proxy && !slices.Contains(out, peers[i].Addr) {
			if len(out) == len(flagged) {
				out = slices.Clone(flagged)
			}
			out = append(out, peers[i].Addr)
		}
	}
	return out
}

// l7Applier routes L7 services to the node's L7 proxy, and once a state is
// in force, hands its L7 part to the proxy (l7.Feed). The part is encoded
// first: a state it fails for is refused before anything is applied.
type l7Applier struct {
	proxy dataplane.L7Proxy
	peers []netip.Addr
	feed  *l7.Feed
	next  interface{ Apply(model.State) error }
}

func (a *l7Applier) Apply(s model.State) error {
	next, err := a.feed.Prepare(s.Services, s.Identities.Names)
	if err != nil {
		return err
	}
	if err := a.next.Apply(a.proxy.Route(s, peerProxies(a.peers, s.Peers))); err != nil {
		return err
	}
	next.Publish()
	return nil
}
