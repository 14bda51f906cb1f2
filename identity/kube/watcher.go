// Package kube learns a node's local workloads from the Kubernetes API:
// the node's pods enrolled in the mesh, each with its pod cgroup.
package kube

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"path/filepath"
	"slices"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	coreinformers "k8s.io/client-go/informers/core/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"

	"github.com/sluice-mesh/sluice/identity"
)

// mirrorAnnotation holds, on the API's mirror of a static pod, the UID
// kubelet knows the pod by, which names its cgroup.
const mirrorAnnotation = "kubernetes.io/config.mirror"

// Options configure a Watcher.
type Options struct {
	Client kubernetes.Interface // required
	Node   string               // required: the node whose pods are watched (spec.nodeName)
	// CgroupRoot is the directory under which pod cgroups are looked
	// for (the agent's routed cgroup). Required.
	CgroupRoot  string
	TrustDomain string       // optional: of the pods' SPIFFE IDs; identity.DefaultTrustDomain if empty
	Logger      *slog.Logger // optional
}

// Watcher keeps the enrolled pods of one node (Enrolled) from shared
// informers on the node's pods and on namespaces, and finds their pod
// cgroups. Run runs the informers; Workloads returns the current
// workloads, and Changes tells when they may have changed. Its methods
// are safe for concurrent use.
type Watcher struct {
	opts       Options
	log        *slog.Logger
	pods       cache.SharedIndexInformer
	namespaces cache.SharedIndexInformer
	changes    chan struct{}

	errMu   sync.Mutex
	lastErr error // guarded by errMu: the informers' last list or watch error

	mu      sync.Mutex  // guards cgroups and missing, Workloads' state
	cgroups *podCgroups // pod UID → cgroup
	missing map[string]bool
}

// New returns a Watcher; it watches nothing until Run.
func New(o Options) (*Watcher, error) {
	switch {
	case o.Client == nil:
		return nil, errors.New("kube: no client")
	case o.Node == "":
		return nil, errors.New("kube: no node name: the watcher follows the pods of one node")
	case o.CgroupRoot == "":
		return nil, errors.New("kube: no cgroup root to find pod cgroups under")
	}
	root, err := filepath.Abs(o.CgroupRoot)
	if err != nil {
		return nil, fmt.Errorf("kube: cgroup root %s: %w", o.CgroupRoot, err)
	}
	o.CgroupRoot = root
	if o.TrustDomain == "" {
		o.TrustDomain = identity.DefaultTrustDomain
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	w := &Watcher{
		opts:    o,
		log:     o.Logger,
		changes: make(chan struct{}, 1),
		cgroups: &podCgroups{root: root, now: time.Now},
		missing: map[string]bool{},
	}
	onNode := fields.OneTermEqualSelector("spec.nodeName", o.Node).String()
	w.pods = coreinformers.NewFilteredPodInformer(o.Client, metav1.NamespaceAll, 0, cache.Indexers{},
		func(lo *metav1.ListOptions) { lo.FieldSelector = onNode })
	w.namespaces = coreinformers.NewNamespaceInformer(o.Client, 0, cache.Indexers{})
	for _, inf := range []cache.SharedIndexInformer{w.pods, w.namespaces} {
		// Managed fields are most of an object's size and of no use here.
		if err := inf.SetTransform(stripManagedFields); err != nil {
			return nil, err
		}
		if err := inf.SetWatchErrorHandlerWithContext(w.watchError); err != nil {
			return nil, err
		}
	}
	signal := func(any) { w.signal() }
	if _, err := w.pods.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    signal,
		UpdateFunc: func(_, _ any) { w.signal() },
		DeleteFunc: signal,
	}); err != nil {
		return nil, err
	}
	if _, err := w.namespaces.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc: signal,
		UpdateFunc: func(old, new any) {
			if meshLabel(old) != meshLabel(new) {
				w.signal()
			}
		},
		DeleteFunc: signal,
	}); err != nil {
		return nil, err
	}
	return w, nil
}

// Run runs the informers until ctx ends, and returns once they stopped.
func (w *Watcher) Run(ctx context.Context) {
	var wg sync.WaitGroup
	for _, inf := range []cache.SharedIndexInformer{w.pods, w.namespaces} {
		wg.Go(func() { inf.RunWithContext(ctx) })
	}
	wg.Wait()
}

// WaitForSync waits until the informers hold the node's pods and the
// namespaces as the API server has them (Run must be running), so that
// Workloads lists every workload of the node. It fails when ctx ends first,
// with the last error the informers met, if any.
func (w *Watcher) WaitForSync(ctx context.Context) error {
	if cache.WaitForCacheSync(ctx.Done(), w.pods.HasSynced, w.namespaces.HasSynced) {
		return nil
	}
	w.errMu.Lock()
	last := w.lastErr
	w.errMu.Unlock()
	if last != nil {
		return fmt.Errorf("kube: the pods of node %s and the namespaces could not be listed: %w", w.opts.Node, last)
	}
	return fmt.Errorf("kube: the pods of node %s and the namespaces are not listed yet: %w", w.opts.Node, context.Cause(ctx))
}

// Changes returns a channel that receives a value after the node's pods
// or a namespace's mesh label changed: the workloads may differ. Changes
// that come in quick succession are signalled once. Other changes (a pod
// cgroup appearing, recreated) are not signalled: Workloads sees them when
// called.
func (w *Watcher) Changes() <-chan struct{} { return w.changes }

func (w *Watcher) signal() {
	select {
	case w.changes <- struct{}{}:
	default:
	}
}

// Workloads returns the node's enrolled pods whose pod cgroup was found,
// sorted by namespace and name. An enrolled pod whose cgroup is not found
// (yet) is left out, and logged once; it is listed once its cgroup exists.
// Each call looks the cgroups up again (podCgroups): a cgroup recreated
// under the same path is the caller's to notice by its new id.
func (w *Watcher) Workloads() []identity.Workload {
	var enrolled []*corev1.Pod
	for _, obj := range w.pods.GetStore().List() {
		pod, ok := obj.(*corev1.Pod)
		if !ok || pod.Spec.NodeName != w.opts.Node {
			continue
		}
		if ok, _ := Enrolled(pod, w.namespaceLabels(pod.Namespace)); ok {
			enrolled = append(enrolled, pod)
		}
	}
	uids := make([]string, len(enrolled))
	for i, pod := range enrolled {
		uids[i] = cgroupUID(pod)
	}

	w.mu.Lock()
	defer w.mu.Unlock()
	found := w.cgroups.find(uids)
	out := make([]identity.Workload, 0, len(enrolled))
	missing := make(map[string]bool, len(w.missing))
	for i, pod := range enrolled {
		path, ok := found[uids[i]]
		if !ok {
			if !w.missing[uids[i]] {
				w.log.Info("enrolled pod has no cgroup yet; it gets its identity once its cgroup appears",
					"pod", pod.Namespace+"/"+pod.Name, "uid", uids[i], "under", w.opts.CgroupRoot)
			}
			missing[uids[i]] = true
			continue
		}
		out = append(out, Workload(pod, w.opts.TrustDomain, path))
	}
	w.missing = missing
	slices.SortFunc(out, func(a, b identity.Workload) int {
		return cmp.Or(cmp.Compare(a.Namespace, b.Namespace), cmp.Compare(a.Name, b.Name))
	})
	return out
}

// namespaceLabels returns the labels of namespace ns; nil if it is not known.
func (w *Watcher) namespaceLabels(ns string) map[string]string {
	obj, ok, err := w.namespaces.GetStore().GetByKey(ns)
	if err != nil || !ok {
		return nil
	}
	if n, ok := obj.(*corev1.Namespace); ok {
		return n.Labels
	}
	return nil
}

// watchError records and logs an informer's list or watch error; the
// informer retries with backoff.
func (w *Watcher) watchError(_ context.Context, r *cache.Reflector, err error) {
	w.errMu.Lock()
	repeated := w.lastErr != nil && w.lastErr.Error() == err.Error()
	w.lastErr = err
	w.errMu.Unlock()
	if !repeated {
		w.log.Warn("kubernetes list or watch failed; retrying", "resource", r.TypeDescription(), "err", err)
	}
}

// cgroupUID returns the UID that names pod's cgroup: the static pod's for
// the API's mirror of one, else the pod's.
func cgroupUID(pod *corev1.Pod) string {
	if uid := pod.Annotations[mirrorAnnotation]; uid != "" {
		return uid
	}
	return string(pod.UID)
}

// meshLabel returns the mesh label of a namespace informer object.
func meshLabel(obj any) string {
	if n, ok := obj.(*corev1.Namespace); ok {
		return n.Labels[MeshLabel]
	}
	return ""
}

// stripManagedFields drops the managed fields of objects entering the
// informers' caches.
func stripManagedFields(obj any) (any, error) {
	if m, ok := obj.(metav1.Object); ok {
		m.SetManagedFields(nil)
	}
	return obj, nil
}
