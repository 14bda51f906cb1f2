package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"time"

	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/sluice-mesh/sluice/dataplane"
	"github.com/sluice-mesh/sluice/dataplane/model"
	"github.com/sluice-mesh/sluice/identity"
	"github.com/sluice-mesh/sluice/identity/kube"
	"github.com/sluice-mesh/sluice/identity/yamlfile"
)

// identityApplier completes each state with the node's identities before
// it is applied: who each local cgroup and each workload address is. They
// matter only to policy, so a mesh without any policy skips the work
// (about 20 ms at 100,000 endpoints).
//
// Local workloads change without a new state: a workload's cgroup is
// created after the state that names it, or the mesh file's workloads
// section is edited. Changed calls, made periodically, tell when the state
// must be applied again (xds.Client.Reapply).
type identityApplier struct {
	next   interface{ Apply(model.State) error }
	locals func() []identity.Local
	// listed returns the workloads of every node the agent is told of
	// besides endpoints (the mesh file's workloads section); the slice
	// is replaced, never modified, when they change.
	listed func() []identity.Workload
	log    *slog.Logger
	// applied, if set, learns of each state applied and the workloads it
	// was applied with (flow records name them).
	onApplied func(s model.State, locals []identity.Local, listed []identity.Workload)

	mu      sync.Mutex
	applied bool // a state is in force
	// Counts of the state in force, for status.
	workloads, rules int
	// The workloads of the last Apply, whether it succeeded or not: those
	// it failed with are not tried again until they change.
	lastLocals []identity.Local
	lastListed []identity.Workload
}

func (a *identityApplier) Apply(s model.State) error {
	locals, listed := a.locals(), a.listed()
	a.mu.Lock()
	a.lastLocals, a.lastListed = locals, listed
	a.mu.Unlock()
	if err := a.apply(s, locals, listed); err != nil {
		return err
	}
	if a.onApplied != nil {
		a.onApplied(s, locals, listed)
	}
	rules := 0
	for i := range s.Services {
		rules += len(s.Services[i].Policies)
	}
	a.mu.Lock()
	a.applied = true
	a.workloads, a.rules = len(locals), rules
	a.mu.Unlock()
	return nil
}

// counts returns the local workloads and the policies of the state in force.
func (a *identityApplier) counts() (workloads, policies int) {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.workloads, a.rules
}

func (a *identityApplier) apply(s model.State, locals []identity.Local, listed []identity.Workload) error {
	switch {
	case hasPolicy(s.Services):
		ids, st, err := identity.BuildListed(s.Services, s.Peers, locals, listed)
		if err != nil {
			return err
		}
		if len(st.AmbiguousAddrs) > 0 {
			a.log.Warn("addresses claimed by several identities are treated as unknown sources",
				"count", len(st.AmbiguousAddrs), "first", st.AmbiguousAddrs[0])
		}
		s.Identities = ids
	case len(locals) > 0:
		// Without policy, only the node's own workloads matter (flows and
		// the fast path), and their numbers need not agree with other
		// nodes': no tag is judged.
		ids, _, err := identity.BuildListed(nil, nil, locals, nil)
		if err != nil {
			return err
		}
		s.Identities = ids
	}
	return a.next.Apply(s)
}

// Changed reports whether a state is in force and the local or listed
// workloads differ from those of the last Apply.
func (a *identityApplier) Changed() bool {
	locals, listed := a.locals(), a.listed()
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.applied && !a.same(locals, listed)
}

// same reports whether locals and listed are those of the last Apply.
func (a *identityApplier) same(locals []identity.Local, listed []identity.Workload) bool {
	return sameLocals(locals, a.lastLocals) && sameSlice(listed, a.lastListed)
}

// sameSlice reports whether a and b are the same slice (not only equal).
func sameSlice[T any](a, b []T) bool {
	return len(a) == len(b) && (len(a) == 0 || &a[0] == &b[0])
}

// sameLocals reports whether two lists of local workloads give the same
// identities: the same cgroups with the same SPIFFE IDs and addresses.
func sameLocals(a, b []identity.Local) bool {
	return slices.EqualFunc(a, b, func(x, y identity.Local) bool {
		return x.CgroupID == y.CgroupID && x.Workload.SPIFFEID == y.Workload.SPIFFEID &&
			slices.Equal(x.Workload.Addrs, y.Workload.Addrs) && x.FastPath == y.FastPath
	})
}

func hasPolicy(services []model.Service) bool {
	for i := range services {
		if len(services[i].Policies) > 0 || services[i].L7 != nil && len(services[i].L7.Policies) > 0 {
			return true
		}
	}
	return false
}

// resolveWorkloads finds the cgroup id of each workload that runs on node.
// A workload whose cgroup does not exist (yet) is left out: it runs nothing
// that could connect (identityApplier.Changed sees it once it exists).
// Its fast-path setting is workloadFastPath's. A cgroup that exists but
// cannot be used is reported to warn.
func resolveWorkloads(ws []identity.Workload, node, mount string, fastPath bool, warn *warnOnce) []identity.Local {
	out := make([]identity.Local, 0, len(ws))
	var problems map[string]error
	defer func() { warn.round(problems) }()
	for _, w := range ws {
		if !w.OnNode(node) {
			continue
		}
		path := w.Cgroup
		if !filepath.IsAbs(path) {
			path = filepath.Join(mount, path)
		}
		id, err := dataplane.CgroupID(path)
		if err != nil {
			if !errors.Is(err, os.ErrNotExist) {
				if problems == nil {
					problems = map[string]error{}
				}
				problems[w.Namespace+"/"+w.Name] = err
			}
			continue
		}
		out = append(out, identity.Local{Workload: w, CgroupID: id, CgroupPath: path, FastPath: workloadFastPath(w.FastPath, fastPath)})
	}
	return out
}

// warnOnce logs why a workload is left without identity once, not on
// every poll: again only after the reason changed or the workload was
// resolved (or dropped) in between. Rounds of resolution run from xDS
// applies and from polls at once; each is handed over whole.
type warnOnce struct {
	log  *slog.Logger
	mu   sync.Mutex
	last map[string]string // workload → error, of the last round handed over
}

// round reports a round's problems (workload → error) and logs those that
// are new.
func (w *warnOnce) round(problems map[string]error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	next := make(map[string]string, len(problems))
	for workload, err := range problems {
		next[workload] = err.Error()
		if w.last[workload] != err.Error() {
			w.log.Warn("workload left without identity", "workload", workload, "err", err)
		}
	}
	w.last = next
}

// enforce runs the dataplane's enforcement loop over the network
// namespaces of the routed cgroup subtree until ctx ends.
func enforce(ctx context.Context, dp *dataplane.Dataplane, cgroup string, observe func(dataplane.Event), log *slog.Logger) {
	netns := func() []string {
		ns, err := dataplane.NetnsInCgroup(cgroup)
		if err != nil {
			log.Warn("could not list network namespaces to terminate denied connections in", "err", err)
		}
		return ns
	}
	if err := dp.Enforce(ctx, netns, observe); err != nil && !errors.Is(err, context.Canceled) {
		log.Error("policy enforcement stopped: denied connections at this node's servers are no longer reset", "err", err)
	}
}

// workloadFastPath is a workload's fast-path setting: its own if it has
// one, else on if the node's default (--fast-path) is, else none, which
// leaves the choice to the services (docs/fastpath.md).
func workloadFastPath(own *bool, nodeDefault bool) model.FastPath {
	switch {
	case own != nil && *own:
		return model.FastPathOn
	case own != nil:
		return model.FastPathOff
	case nodeDefault:
		return model.FastPathOn
	}
	return model.FastPathUnset
}

// kubeFlags are the agent's flags for learning its workloads from the
// Kubernetes API.
type kubeFlags struct {
	enabled     bool // --kubernetes
	kubeconfig  string
	trustDomain string
	// nodeNameGiven is whether --node-name was given (on the command
	// line, in the environment or the settings file), not defaulted to
	// the host name, which need not be the Kubernetes node's name.
	nodeNameGiven bool
}

// kubeSyncTimeout bounds the wait at start for the node's pods and the
// namespaces to be listed: the first state is applied only with every
// enrolled pod's identity, so that a restarted agent drops none.
const kubeSyncTimeout = 2 * time.Minute

// checkKubeFlags refuses Kubernetes flags that contradict the others or
// would be ignored.
func checkKubeFlags(f agentFlags) error {
	k := f.kube
	if !k.enabled {
		if k.kubeconfig != "" || (k.trustDomain != "" && k.trustDomain != identity.DefaultTrustDomain) {
			return errors.New("--kubeconfig and --trust-domain apply with --kubernetes only")
		}
		return nil
	}
	switch {
	case f.mesh != "":
		return errors.New("--kubernetes and --mesh exclude each other: with --kubernetes the workloads are the node's pods and the services come from --xds (sluice controlplane --kubernetes)")
	case f.workloads != "":
		return errors.New("--kubernetes and --workloads exclude each other: with --kubernetes the node's workloads are its enrolled pods")
	case !k.nodeNameGiven || f.node.NodeName == "":
		return errors.New("--kubernetes needs --node-name, the Kubernetes node this agent runs on (in a DaemonSet, from the downward API: spec.nodeName)")
	}
	if reason := yamlfile.CheckTrustDomain(k.trustDomain); reason != "" {
		return fmt.Errorf("--trust-domain %q %s", k.trustDomain, reason)
	}
	return nil
}

// kubeConfig returns the configuration to reach the API server: from the
// kubeconfig file if one is given, else the in-cluster one.
func kubeConfig(kubeconfig string) (*rest.Config, error) {
	if kubeconfig != "" {
		cfg, err := clientcmd.BuildConfigFromFlags("", kubeconfig)
		if err != nil {
			return nil, fmt.Errorf("--kubeconfig %s: %w", kubeconfig, err)
		}
		return cfg, nil
	}
	cfg, err := rest.InClusterConfig()
	if err != nil {
		return nil, fmt.Errorf("--kubernetes: no --kubeconfig given and not in a pod with a service account: %w", err)
	}
	return cfg, nil
}

// watchPods starts watching the enrolled pods of node, their cgroups
// under cgroupRoot, and returns once the node's pods and the namespaces
// are listed (or fails after kubeSyncTimeout). stop ends the watch.
func watchPods(ctx context.Context, k kubeFlags, node, cgroupRoot string, log *slog.Logger) (_ *kube.Watcher, stop func(), err error) {
	cfg, err := kubeConfig(k.kubeconfig)
	if err != nil {
		return nil, nil, err
	}
	cfg = rest.CopyConfig(cfg)
	cfg.UserAgent = "sluice-agent/" + version()
	client, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return nil, nil, fmt.Errorf("--kubernetes: %w", err)
	}
	w, err := kube.New(kube.Options{Client: client, Node: node, CgroupRoot: cgroupRoot, TrustDomain: k.trustDomain, Logger: log})
	if err != nil {
		return nil, nil, err
	}
	ctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() {
		defer close(done)
		w.Run(ctx)
	}()
	stop = func() { cancel(); <-done }
	start := time.Now()
	log.Info("listing this node's pods and the namespaces", "node", node, "api_server", cfg.Host)
	syncCtx, cancelSync := context.WithTimeoutCause(ctx, kubeSyncTimeout, fmt.Errorf("gave up after %v", kubeSyncTimeout))
	defer cancelSync()
	if err := w.WaitForSync(syncCtx); err != nil {
		stop()
		return nil, nil, fmt.Errorf("--kubernetes: %w (the agent needs to list and watch pods and namespaces at %s)", err, cfg.Host)
	}
	log.Info("watching this node's pods", "node", node, "workloads", len(w.Workloads()), "took", time.Since(start).Round(time.Millisecond))
	return w, stop, nil
}
