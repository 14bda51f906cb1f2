package kubelet

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/util/retry"

	"github.com/sluice-mesh/sluice/e2e/cluster"
)

// Layout is how a node's kubelet names the cgroups of pods and containers.
type Layout string

// The kubelet's two cgroup drivers.
const (
	// Systemd: kubepods.slice/kubepods-<qos>.slice/kubepods-<qos>-pod<uid
	// with _ for ->.slice/cri-containerd-<id>.scope.
	Systemd Layout = "systemd"
	// Cgroupfs: kubepods/<qos>/pod<uid>/<id>.
	Cgroupfs Layout = "cgroupfs"
)

// NodeConfig describes one simulated node.
type NodeConfig struct {
	Name   string
	Layout Layout // Systemd if empty
	Zone   string // topology.kubernetes.io/zone; none if empty
	// Pods is the prefix pod addresses come from, one /24 or smaller per
	// node, inside the cluster bridge's 10.244.0.0/16; RoutedNodeAddrs
	// must stay clear of it.
	Pods netip.Prefix
}

// Image is what a container image runs: the executable, before the
// container's command and args, and environment of its own.
type Image struct {
	Path string
	Args []string // before the container's command and args
	Env  []string
}

// Config configures a Kubelet.
type Config struct {
	Client  kubernetes.Interface
	Cluster *cluster.Cluster
	Nodes   []NodeConfig
	Images  map[string]Image // container image → what it runs
	Log     *slog.Logger     // optional
}

// Kubelet runs the pods of its nodes. Its methods may be called from
// several goroutines.
type Kubelet struct {
	client kubernetes.Interface
	images map[string]Image
	log    *slog.Logger
	nodes  map[string]*node
	order  []string // node names, for round-robin scheduling
	cancel context.CancelFunc
	done   chan struct{}
	queue  chan string // pod keys (namespace/name) to reconcile
	lister func(ns, name string) (*corev1.Pod, bool)

	mu      sync.Mutex
	pods    map[types.UID]*pod // running pods, by UID
	pending map[string]bool    // keys queued and not yet taken
	errs    []error
	next    int                  // round robin
	chosen  map[types.UID]string // node chosen for each pod scheduled
}

type node struct {
	NodeConfig
	sim  *cluster.Node
	used map[netip.Addr]bool // guarded by Kubelet.mu
}

type pod struct {
	uid        types.UID
	ns, name   string
	node       *node
	sim        *cluster.Pod
	containers map[string]*container
	restarts   map[string]int32
	deleting   bool
}

type container struct {
	id     string
	cgroup string
	cmd    *exec.Cmd
	exited chan struct{}
}

// Start registers the nodes (Node objects, Ready, with their zones), adds
// them to the cluster, and begins scheduling and running pods. Close stops
// it; the pods' processes, namespaces and cgroups go with the cluster.
func Start(ctx context.Context, cfg Config) (_ *Kubelet, err error) {
	log := cfg.Log
	if log == nil {
		log = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	k := &Kubelet{client: cfg.Client, images: cfg.Images, log: log, nodes: map[string]*node{},
		queue: make(chan string, 4096), pods: map[types.UID]*pod{}, pending: map[string]bool{}, chosen: map[types.UID]string{}, done: make(chan struct{})}
	for _, nc := range cfg.Nodes {
		if nc.Layout == "" {
			nc.Layout = Systemd
		}
		if nc.Layout != Systemd && nc.Layout != Cgroupfs {
			return nil, fmt.Errorf("node %s: unknown cgroup layout %q", nc.Name, nc.Layout)
		}
		if !nc.Pods.IsValid() || !nc.Pods.Addr().Is4() || nc.Pods.Bits() < 24 {
			return nil, fmt.Errorf("node %s: pod prefix %v: want an IPv4 /24 or smaller", nc.Name, nc.Pods)
		}
		sim, err := cfg.Cluster.AddNode(nc.Name)
		if err != nil {
			return nil, err
		}
		if err := k.register(ctx, nc); err != nil {
			return nil, err
		}
		k.nodes[nc.Name] = &node{NodeConfig: nc, sim: sim, used: map[netip.Addr]bool{}}
		k.order = append(k.order, nc.Name)
	}
	ctx, k.cancel = context.WithCancel(context.Background())
	factory := informers.NewSharedInformerFactory(cfg.Client, 0)
	inf := factory.Core().V1().Pods()
	enqueue := func(obj any) {
		if key, err := cache.DeletionHandlingMetaNamespaceKeyFunc(obj); err == nil {
			k.enqueue(key)
		}
	}
	if _, err := inf.Informer().AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc: enqueue, UpdateFunc: func(_, o any) { enqueue(o) }, DeleteFunc: enqueue,
	}); err != nil {
		return nil, err
	}
	lister := inf.Lister()
	k.lister = func(ns, name string) (*corev1.Pod, bool) {
		p, err := lister.Pods(ns).Get(name)
		return p, err == nil
	}
	factory.Start(ctx.Done())
	for typ, ok := range factory.WaitForCacheSync(ctx.Done()) {
		if !ok {
			k.cancel()
			return nil, fmt.Errorf("kubelet: %v informer did not sync", typ)
		}
	}
	go k.run(ctx)
	return k, nil
}

// register creates the Node object and reports it Ready.
func (k *Kubelet) register(ctx context.Context, nc NodeConfig) error {
	labels := map[string]string{"kubernetes.io/hostname": nc.Name, "kubernetes.io/os": "linux"}
	if nc.Zone != "" {
		labels["topology.kubernetes.io/zone"] = nc.Zone
	}
	n, err := k.client.CoreV1().Nodes().Create(ctx, &corev1.Node{
		ObjectMeta: metav1.ObjectMeta{Name: nc.Name, Labels: labels},
		Spec:       corev1.NodeSpec{PodCIDR: nc.Pods.String(), PodCIDRs: []string{nc.Pods.String()}},
	}, metav1.CreateOptions{})
	if err != nil {
		return fmt.Errorf("register node %s: %w", nc.Name, err)
	}
	now := metav1.Now()
	n.Status.Conditions = []corev1.NodeCondition{{Type: corev1.NodeReady, Status: corev1.ConditionTrue,
		Reason: "KubeletReady", LastHeartbeatTime: now, LastTransitionTime: now}}
	if _, err := k.client.CoreV1().Nodes().UpdateStatus(ctx, n, metav1.UpdateOptions{}); err != nil {
		return fmt.Errorf("node %s status: %w", nc.Name, err)
	}
	return nil
}

func (k *Kubelet) enqueue(key string) {
	k.mu.Lock()
	defer k.mu.Unlock()
	if k.pending[key] {
		return
	}
	k.pending[key] = true
	select {
	case k.queue <- key:
	default:
		delete(k.pending, key)
		k.errs = append(k.errs, fmt.Errorf("kubelet queue full, pod %s dropped", key))
	}
}

func (k *Kubelet) run(ctx context.Context) {
	defer close(k.done)
	retry := time.NewTicker(500 * time.Millisecond)
	defer retry.Stop()
	var failed []string
	for {
		select {
		case <-ctx.Done():
			return
		case key := <-k.queue:
			k.mu.Lock()
			delete(k.pending, key)
			k.mu.Unlock()
			if err := k.reconcile(ctx, key); err != nil && ctx.Err() == nil {
				k.log.Warn("kubelet: reconcile failed, will retry", "pod", key, "err", err)
				failed = append(failed, key)
			}
		case <-retry.C:
			for _, key := range failed {
				k.enqueue(key)
			}
			failed = nil
		}
	}
}

// reconcile brings the pod called key to what the API says of it.
func (k *Kubelet) reconcile(ctx context.Context, key string) error {
	ns, name, _ := strings.Cut(key, "/")
	obj, exists := k.lister(ns, name)
	k.mu.Lock()
	var running *pod
	for _, p := range k.pods {
		if p.ns == ns && p.name == name {
			running = p
		}
	}
	k.mu.Unlock()
	if running != nil && (!exists || obj.UID != running.uid) {
		// Deleted (or replaced by a pod of the same name) behind our back.
		return k.teardown(running)
	}
	if !exists {
		return nil
	}
	if obj.Spec.NodeName == "" {
		if obj.DeletionTimestamp != nil {
			return nil
		}
		return k.schedule(ctx, obj)
	}
	n := k.nodes[obj.Spec.NodeName]
	if n == nil {
		return nil // another node's pod
	}
	if obj.DeletionTimestamp != nil {
		if running != nil {
			if err := k.teardown(running); err != nil {
				return err
			}
		}
		// The kubelet's final word: the pod is gone from the node.
		grace := int64(0)
		err := k.client.CoreV1().Pods(ns).Delete(ctx, name, metav1.DeleteOptions{
			GracePeriodSeconds: &grace, Preconditions: &metav1.Preconditions{UID: &obj.UID}})
		if apierrors.IsNotFound(err) || apierrors.IsConflict(err) {
			return nil
		}
		return err
	}
	if running == nil {
		var err error
		if running, err = k.startPod(obj, n); err != nil {
			k.fail(obj, err)
			return err
		}
	}
	return k.report(ctx, running)
}

// schedule binds a pending pod: to the node its nodeSelector's
// kubernetes.io/hostname names, else round robin.
func (k *Kubelet) schedule(ctx context.Context, p *corev1.Pod) error {
	target := p.Spec.NodeSelector["kubernetes.io/hostname"]
	if target == "" {
		// A pod seen again before its binding shows in the informer keeps
		// the node it was given, so that round robin stays round.
		k.mu.Lock()
		target = k.chosen[p.UID]
		if target == "" {
			target = k.order[k.next%len(k.order)]
			k.next++
			k.chosen[p.UID] = target
		}
		k.mu.Unlock()
	} else if k.nodes[target] == nil {
		return nil // not ours
	}
	err := k.client.CoreV1().Pods(p.Namespace).Bind(ctx, &corev1.Binding{
		ObjectMeta: metav1.ObjectMeta{Name: p.Name, Namespace: p.Namespace, UID: p.UID},
		Target:     corev1.ObjectReference{Kind: "Node", Name: target},
	}, metav1.CreateOptions{})
	if apierrors.IsConflict(err) || apierrors.IsNotFound(err) {
		return nil
	}
	return err
}

// cgroups returns the pod's cgroup (relative to its node's) and the name of
// a container's cgroup below it, in the node's layout.
func cgroups(l Layout, p *corev1.Pod) (podDir string, containerDir func(id string) string) {
	qos := strings.ToLower(string(qosClass(p)))
	uid := string(p.UID)
	if l == Cgroupfs {
		dir := filepath.Join("kubepods", qos, "pod"+uid)
		if qos == "guaranteed" {
			dir = filepath.Join("kubepods", "pod"+uid)
		}
		return dir, func(id string) string { return id }
	}
	under := strings.ReplaceAll(uid, "-", "_")
	dir := filepath.Join("kubepods.slice", "kubepods-"+qos+".slice", "kubepods-"+qos+"-pod"+under+".slice")
	if qos == "guaranteed" {
		dir = filepath.Join("kubepods.slice", "kubepods-pod"+under+".slice")
	}
	return dir, func(id string) string { return "cri-containerd-" + id + ".scope" }
}

// qosClass is the pod's QoS class, as the API server set it, or worked out
// from its containers' resources when it has not.
func qosClass(p *corev1.Pod) corev1.PodQOSClass {
	if p.Status.QOSClass != "" {
		return p.Status.QOSClass
	}
	for _, c := range p.Spec.Containers {
		if len(c.Resources.Requests) > 0 || len(c.Resources.Limits) > 0 {
			return corev1.PodQOSBurstable
		}
	}
	return corev1.PodQOSBestEffort
}

// startPod creates the pod on its node and starts its containers.
func (k *Kubelet) startPod(obj *corev1.Pod, n *node) (*pod, error) {
	if obj.Spec.HostNetwork {
		return nil, errors.New("host-network pods are not simulated")
	}
	addr, err := k.allocate(n)
	if err != nil {
		return nil, err
	}
	podDir, _ := cgroups(n.Layout, obj)
	// Pod names repeat across namespaces and over time: the UID keeps the
	// network namespace's name unique.
	sim, err := n.sim.AddPodAt(string(obj.UID)[:8], addr, podDir)
	if err != nil {
		k.release(n, addr)
		return nil, err
	}
	p := &pod{uid: obj.UID, ns: obj.Namespace, name: obj.Name, node: n, sim: sim,
		containers: map[string]*container{}, restarts: map[string]int32{}}
	k.mu.Lock()
	k.pods[obj.UID] = p
	k.mu.Unlock()
	for _, c := range obj.Spec.Containers {
		if err := k.startContainer(obj, p, c); err != nil {
			return p, err
		}
	}
	k.log.Info("kubelet: pod started", "pod", obj.Namespace+"/"+obj.Name, "node", n.Name, "ip", addr, "cgroup", sim.Cgroup)
	return p, nil
}

func (k *Kubelet) allocate(n *node) (netip.Addr, error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	// .1 is left out, as a node's gateway would be.
	for a := n.Pods.Addr().Next().Next(); n.Pods.Contains(a); a = a.Next() {
		if !n.used[a] {
			n.used[a] = true
			return a, nil
		}
	}
	return netip.Addr{}, fmt.Errorf("node %s: no pod address left in %s", n.Name, n.Pods)
}

func (k *Kubelet) release(n *node, a netip.Addr) {
	k.mu.Lock()
	delete(n.used, a)
	k.mu.Unlock()
}

var varRef = regexp.MustCompile(`\$\(([A-Za-z_][A-Za-z0-9_]*)\)`)

// startContainer starts container c of the pod in a fresh container
// cgroup, and restarts it there whenever it exits while the pod lives.
func (k *Kubelet) startContainer(obj *corev1.Pod, p *pod, c corev1.Container) error {
	img, ok := k.images[c.Image]
	if !ok {
		return fmt.Errorf("container %s: image %q is not one the simulated kubelet knows", c.Name, c.Image)
	}
	env := map[string]string{}
	var envList []string
	for _, e := range c.Env {
		v := e.Value
		if f := e.ValueFrom; f != nil && f.FieldRef != nil {
			switch f.FieldRef.FieldPath {
			case "metadata.name":
				v = obj.Name
			case "metadata.namespace":
				v = obj.Namespace
			case "spec.nodeName":
				v = obj.Spec.NodeName
			case "status.podIP":
				v = p.sim.IP.String()
			default:
				return fmt.Errorf("container %s: env %s: field %s is not simulated", c.Name, e.Name, f.FieldRef.FieldPath)
			}
		}
		env[e.Name] = v
		envList = append(envList, e.Name+"="+v)
	}
	expand := func(s string) string {
		return varRef.ReplaceAllStringFunc(s, func(m string) string {
			if v, ok := env[m[2:len(m)-1]]; ok {
				return v
			}
			return m
		})
	}
	args := slices.Clone(img.Args)
	for _, a := range append(slices.Clone(c.Command), c.Args...) {
		args = append(args, expand(a))
	}
	_, containerDir := cgroups(p.node.Layout, obj)
	k.mu.Lock()
	id := fmt.Sprintf("%.8s%s%d", strings.ReplaceAll(string(obj.UID), "-", ""), c.Name, p.restarts[c.Name])
	k.mu.Unlock()
	dir, err := p.sim.SubCgroup(containerDir(id))
	if err != nil {
		return err
	}
	cmd := p.sim.Command(context.Background(), img.Path, args...)
	cmd.Env = append(append(os.Environ(), img.Env...), envList...)
	cmd.Stdout, cmd.Stderr = io.Discard, io.Discard
	if err := p.sim.StartIn(cmd, dir); err != nil {
		return err
	}
	ct := &container{id: id, cgroup: dir, cmd: cmd, exited: make(chan struct{})}
	k.mu.Lock()
	p.containers[c.Name] = ct
	k.mu.Unlock()
	go func() {
		_ = cmd.Wait()
		close(ct.exited)
		k.mu.Lock()
		restart := !p.deleting && k.pods[p.uid] == p
		if restart {
			p.restarts[c.Name]++
		}
		k.mu.Unlock()
		if !restart {
			return
		}
		// The old container's cgroup goes, as the runtime removes it.
		_ = os.Remove(dir)
		if err := k.startContainer(obj, p, c); err != nil {
			k.mu.Lock()
			k.errs = append(k.errs, fmt.Errorf("restart container %s of pod %s/%s: %w", c.Name, p.ns, p.name, err))
			k.mu.Unlock()
		}
		k.enqueue(p.ns + "/" + p.name)
	}()
	return nil
}

// RestartContainer kills a container's process; the kubelet starts it
// again in a new container cgroup, as after a crash.
func (k *Kubelet) RestartContainer(namespace, name, containerName string) error {
	k.mu.Lock()
	var ct *container
	for _, p := range k.pods {
		if p.ns == namespace && p.name == name {
			ct = p.containers[containerName]
		}
	}
	k.mu.Unlock()
	if ct == nil {
		return fmt.Errorf("no running container %s in pod %s/%s", containerName, namespace, name)
	}
	if err := ct.cmd.Process.Kill(); err != nil {
		return err
	}
	<-ct.exited
	return nil
}

// Pod returns the simulated pod running the API's pod namespace/name.
func (k *Kubelet) Pod(namespace, name string) (*cluster.Pod, bool) {
	k.mu.Lock()
	defer k.mu.Unlock()
	for _, p := range k.pods {
		if p.ns == namespace && p.name == name {
			return p.sim, true
		}
	}
	return nil, false
}

// Node returns the simulated node called name.
func (k *Kubelet) Node(name string) *cluster.Node {
	if n := k.nodes[name]; n != nil {
		return n.sim
	}
	return nil
}

// teardown stops the pod's containers and removes it from its node.
func (k *Kubelet) teardown(p *pod) error {
	k.mu.Lock()
	p.deleting = true
	k.mu.Unlock()
	err := p.sim.Remove()
	k.mu.Lock()
	delete(k.pods, p.uid)
	delete(p.node.used, p.sim.IP)
	k.mu.Unlock()
	if err == nil {
		k.log.Info("kubelet: pod removed", "pod", p.ns+"/"+p.name, "node", p.node.Name)
	}
	return err
}

// report writes the pod's status: running, its address, its containers'
// readiness (a TCP readiness probe is honoured) and restart counts.
func (k *Kubelet) report(ctx context.Context, p *pod) error {
	obj, ok := k.lister(p.ns, p.name)
	if !ok || obj.UID != p.uid {
		return nil
	}
	k.mu.Lock()
	type state struct {
		id       string
		restarts int32
		running  bool
	}
	states := map[string]state{}
	for name, c := range p.containers {
		running := true
		select {
		case <-c.exited:
			running = false
		default:
		}
		states[name] = state{c.id, p.restarts[name], running}
	}
	k.mu.Unlock()
	ready := true
	var statuses []corev1.ContainerStatus
	for _, c := range obj.Spec.Containers {
		st := states[c.Name]
		r := st.running && k.probe(p, c)
		ready = ready && r
		cs := corev1.ContainerStatus{Name: c.Name, Image: c.Image, ImageID: c.Image, ContainerID: "containerd://" + st.id,
			Ready: r, RestartCount: st.restarts, Started: &st.running}
		if st.running {
			cs.State.Running = &corev1.ContainerStateRunning{StartedAt: metav1.Now()}
		} else {
			cs.State.Waiting = &corev1.ContainerStateWaiting{Reason: "ContainerCreating"}
		}
		statuses = append(statuses, cs)
	}
	if !ready {
		// Probe again shortly, as the kubelet's prober would.
		time.AfterFunc(200*time.Millisecond, func() { k.enqueue(p.ns + "/" + p.name) })
	}
	want := func(s *corev1.PodStatus) {
		cond := func(t corev1.PodConditionType, ok bool) {
			status := corev1.ConditionFalse
			if ok {
				status = corev1.ConditionTrue
			}
			for i := range s.Conditions {
				if s.Conditions[i].Type == t {
					if s.Conditions[i].Status != status {
						s.Conditions[i].Status, s.Conditions[i].LastTransitionTime = status, metav1.Now()
					}
					return
				}
			}
			s.Conditions = append(s.Conditions, corev1.PodCondition{Type: t, Status: status, LastTransitionTime: metav1.Now()})
		}
		s.Phase = corev1.PodRunning
		ip := p.sim.IP.String()
		s.PodIP, s.PodIPs = ip, []corev1.PodIP{{IP: ip}}
		s.HostIP, s.HostIPs = "", nil
		if s.StartTime == nil {
			now := metav1.Now()
			s.StartTime = &now
		}
		cond(corev1.PodScheduled, true)
		cond(corev1.PodInitialized, true)
		cond(corev1.ContainersReady, ready)
		cond(corev1.PodReady, ready)
		// Keep the running containers' start times: only changes are written.
		for i := range statuses {
			for _, old := range s.ContainerStatuses {
				if old.Name == statuses[i].Name && old.ContainerID == statuses[i].ContainerID && old.State.Running != nil && statuses[i].State.Running != nil {
					statuses[i].State.Running.StartedAt = old.State.Running.StartedAt
				}
			}
		}
		s.ContainerStatuses = statuses
	}
	next := obj.Status.DeepCopy()
	want(next)
	if statusEqual(&obj.Status, next) {
		return nil
	}
	return retry.RetryOnConflict(retry.DefaultRetry, func() error {
		cur, err := k.client.CoreV1().Pods(p.ns).Get(ctx, p.name, metav1.GetOptions{})
		if err != nil {
			if apierrors.IsNotFound(err) {
				return nil
			}
			return err
		}
		if cur.UID != p.uid {
			return nil
		}
		want(&cur.Status)
		_, err = k.client.CoreV1().Pods(p.ns).UpdateStatus(ctx, cur, metav1.UpdateOptions{})
		return err
	})
}

// statusEqual compares what report writes, ignoring times.
func statusEqual(a, b *corev1.PodStatus) bool {
	if a.Phase != b.Phase || a.PodIP != b.PodIP || len(a.Conditions) != len(b.Conditions) || len(a.ContainerStatuses) != len(b.ContainerStatuses) {
		return false
	}
	for i := range a.Conditions {
		if a.Conditions[i].Type != b.Conditions[i].Type || a.Conditions[i].Status != b.Conditions[i].Status {
			return false
		}
	}
	for i := range a.ContainerStatuses {
		x, y := a.ContainerStatuses[i], b.ContainerStatuses[i]
		if x.Name != y.Name || x.Ready != y.Ready || x.RestartCount != y.RestartCount || x.ContainerID != y.ContainerID || (x.State.Running == nil) != (y.State.Running == nil) {
			return false
		}
	}
	return true
}

// probe runs the container's TCP readiness probe, if it has one, from
// inside the pod's network namespace.
func (k *Kubelet) probe(p *pod, c corev1.Container) bool {
	rp := c.ReadinessProbe
	if rp == nil || rp.TCPSocket == nil {
		return true
	}
	port := rp.TCPSocket.Port.IntValue()
	if port == 0 {
		for _, cp := range c.Ports {
			if cp.Name == rp.TCPSocket.Port.String() {
				port = int(cp.ContainerPort)
			}
		}
	}
	return dialIn(p.sim.NetNS, net.JoinHostPort(p.sim.IP.String(), strconv.Itoa(port))) == nil
}

// dialIn connects to addr from network namespace netns (named, for `ip
// netns`) and closes the connection.
func dialIn(netns, addr string) error {
	target, err := os.Open(filepath.Join("/run/netns", netns))
	if err != nil {
		return err
	}
	defer target.Close()
	errc := make(chan error, 1)
	go func() {
		// The thread is left locked, and so discarded, if it cannot be put
		// back in its namespace.
		runtime.LockOSThread()
		self, err := os.Open(fmt.Sprintf("/proc/self/task/%d/ns/net", unix.Gettid()))
		if err != nil {
			errc <- err
			return
		}
		defer self.Close()
		if err := unix.Setns(int(target.Fd()), unix.CLONE_NEWNET); err != nil {
			errc <- err
			return
		}
		conn, derr := net.DialTimeout("tcp", addr, time.Second)
		if derr == nil {
			conn.Close()
		}
		if err := unix.Setns(int(self.Fd()), unix.CLONE_NEWNET); err == nil {
			runtime.UnlockOSThread()
		}
		errc <- derr
	}()
	return <-errc
}

// fail records a pod that could not start, in its status and in Errors.
func (k *Kubelet) fail(obj *corev1.Pod, err error) {
	k.mu.Lock()
	k.errs = append(k.errs, fmt.Errorf("pod %s/%s: %w", obj.Namespace, obj.Name, err))
	k.mu.Unlock()
}

// Errors returns what went wrong running pods so far.
func (k *Kubelet) Errors() error {
	k.mu.Lock()
	defer k.mu.Unlock()
	return errors.Join(k.errs...)
}

// Close stops scheduling and reconciling; the pods are left to the
// cluster's Close.
func (k *Kubelet) Close() {
	k.cancel()
	<-k.done
	k.mu.Lock()
	for _, p := range k.pods {
		p.deleting = true
	}
	k.mu.Unlock()
}
