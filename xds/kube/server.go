package kube

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/dynamic/dynamicinformer"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/kubernetes/scheme"
	typedcorev1 "k8s.io/client-go/kubernetes/typed/core/v1"
	toolscache "k8s.io/client-go/tools/cache"
	"k8s.io/client-go/tools/record"

	"github.com/sluice-mesh/sluice/xds/controlplane"
)

// DefaultDebounce is how long the Server gathers changes before serving
// them, when Options.Debounce is not set: a burst of events (a rollout, a
// resync) becomes one update.
const DefaultDebounce = 100 * time.Millisecond

// EventReason is the reason of the Events the Server records on Services
// it does not (fully) serve.
const EventReason = "Unsupported"

// ErrInvalidOptions is the class of errors New returns for Options it
// cannot work with.
var ErrInvalidOptions = errors.New("invalid kubernetes control plane options")

// ErrNoCRD is returned by Serve when the API server does not serve the
// MeshPolicy custom resource.
var ErrNoCRD = errors.New("the MeshPolicy custom resource (meshpolicies.sluice.io) is not installed; apply manifests/meshpolicy-crd.yaml")

// Options configure a Server.
type Options struct {
	Client      kubernetes.Interface // required
	Dynamic     dynamic.Interface    // required: reads MeshPolicies and writes their status
	TrustDomain string               // optional: of the pods' SPIFFE IDs; mesh.DefaultTrustDomain if empty
	Debounce    time.Duration        // optional: DefaultDebounce if 0
	Logger      *slog.Logger         // optional: nil logs nothing
}

// Server serves the Services of a Kubernetes cluster to Sluice agents as
// xDS, the same resources to every agent whatever its node. Its methods
// are safe for concurrent use; Serve runs once.
type Server struct {
	client   kubernetes.Interface
	dyn      dynamic.Interface
	debounce time.Duration
	log      *slog.Logger

	listeners, clusters, endpoints *cache.LinearCache
	mux                            *cache.MuxCache

	ready   atomic.Bool
	changed chan struct{} // signalled (without blocking) when the state is marked

	mu       sync.Mutex
	state    *State                                // guarded by mu
	policies map[string]*unstructured.Unstructured // guarded by mu: MeshPolicy objects as last seen, for status writes
	running  bool                                  // guarded by mu: Serve was called
}

// New prepares a Server; Serve starts it.
func New(opts Options) (*Server, error) {
	if opts.Client == nil || opts.Dynamic == nil {
		return nil, fmt.Errorf("%w: Client and Dynamic are required", ErrInvalidOptions)
	}
	if opts.Debounce < 0 {
		return nil, fmt.Errorf("%w: Debounce %v is negative", ErrInvalidOptions, opts.Debounce)
	}
	td := opts.TrustDomain
	if td == "" {
		td = "cluster.local"
	}
	s := &Server{
		client:   opts.Client,
		dyn:      opts.Dynamic,
		debounce: opts.Debounce,
		log:      opts.Logger,
		changed:  make(chan struct{}, 1),
		state:    NewState(td),
		policies: map[string]*unstructured.Unstructured{},
	}
	if s.debounce == 0 {
		s.debounce = DefaultDebounce
	}
	if s.log == nil {
		s.log = slog.New(slog.DiscardHandler)
	}
	// Versions of a LinearCache count from 1 in each process: a prefix
	// unique to this one makes a client reconnecting with a version of a
	// previous process get everything again.
	var b [4]byte
	_, _ = rand.Read(b[:])
	prefix := hex.EncodeToString(b[:]) + "-"
	lc := func(typ string) *cache.LinearCache {
		return cache.NewLinearCache(typ, cache.WithVersionPrefix(prefix), cache.WithLogger(controlplane.Logger(s.log)))
	}
	s.listeners, s.clusters, s.endpoints = lc(resource.ListenerType), lc(resource.ClusterType), lc(resource.EndpointType)
	s.mux = &cache.MuxCache{
		Classify:      func(r *cache.Request) string { return r.GetTypeUrl() },
		ClassifyDelta: func(r *cache.DeltaRequest) string { return r.GetTypeUrl() },
		Caches: map[string]cache.Cache{
			resource.ListenerType: s.listeners,
			resource.ClusterType:  s.clusters,
			resource.EndpointType: s.endpoints,
		},
	}
	return s, nil
}

// Ready reports whether the Server has read the whole cluster and serves
// it.
func (s *Server) Ready() bool { return s.ready.Load() }

// Serve watches the cluster and serves it as xDS on lis until ctx ends.
// It serves nothing before its watches have listed every Service,
// EndpointSlice, Pod and MeshPolicy, so that a restarted control plane
// never hands agents an empty world: connections wait meanwhile. It returns
// ErrNoCRD if the MeshPolicy resource is not installed, nil once ctx ends.
func (s *Server) Serve(ctx context.Context, lis net.Listener) error {
	s.mu.Lock()
	if s.running {
		s.mu.Unlock()
		return errors.New("kubernetes control plane: Serve called twice")
	}
	s.running = true
	s.mu.Unlock()
	defer lis.Close()

	if err := s.checkCRD(); err != nil {
		return err
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()

	events := record.NewBroadcaster(record.WithContext(ctx))
	events.StartRecordingToSink(&typedcorev1.EventSinkImpl{Interface: s.client.CoreV1().Events("")})
	defer events.Shutdown()
	recorder := events.NewRecorder(scheme.Scheme, corev1.EventSource{Component: "sluice-controlplane"})

	factory := informers.NewSharedInformerFactory(s.client, 0)
	dynFactory := dynamicinformer.NewDynamicSharedInformerFactory(s.dyn, 0)
	svcInf := factory.Core().V1().Services().Informer()
	sliceInf := factory.Discovery().V1().EndpointSlices().Informer()
	podInf := factory.Core().V1().Pods().Informer()
	polInf := dynFactory.ForResource(MeshPolicyResource).Informer()
	for _, inf := range []toolscache.SharedIndexInformer{svcInf, sliceInf, podInf, polInf} {
		if err := inf.SetTransform(slim); err != nil {
			return fmt.Errorf("kubernetes control plane: %w", err)
		}
	}
	handlers := []struct {
		inf         toolscache.SharedIndexInformer
		set         func(any)
		del         func(namespace, name string)
		description string
	}{
		{svcInf, func(o any) { s.state.SetService(o.(*corev1.Service)) }, s.state.DeleteService, "services"},
		{sliceInf, func(o any) { s.state.SetEndpointSlice(o.(*discoveryv1.EndpointSlice)) }, s.state.DeleteEndpointSlice, "endpointslices"},
		{podInf, func(o any) { s.state.SetPod(o.(*corev1.Pod)) }, s.state.DeletePod, "pods"},
		{polInf, func(o any) { s.setPolicy(o.(*unstructured.Unstructured)) }, s.deletePolicy, "meshpolicies"},
	}
	for _, h := range handlers {
		set, del := h.set, h.del
		_, err := h.inf.AddEventHandler(toolscache.ResourceEventHandlerFuncs{
			AddFunc:    func(o any) { s.mark(func() { set(o) }) },
			UpdateFunc: func(_, o any) { s.mark(func() { set(o) }) },
			DeleteFunc: func(o any) {
				if t, ok := o.(toolscache.DeletedFinalStateUnknown); ok {
					o = t.Obj
				}
				if m, ok := o.(metav1.Object); ok {
					s.mark(func() { del(m.GetNamespace(), m.GetName()) })
				}
			},
		})
		if err != nil {
			return fmt.Errorf("kubernetes control plane: watch %s: %w", h.description, err)
		}
	}
	factory.Start(ctx.Done())
	dynFactory.Start(ctx.Done())
	// The informers stop when ctx ends; Shutdown waits for them.
	defer func() {
		cancel()
		factory.Shutdown()
		dynFactory.Shutdown()
	}()
	s.log.Info("kubernetes control plane: waiting for the cluster's Services, EndpointSlices, Pods and MeshPolicies")
	if !toolscache.WaitForCacheSync(ctx.Done(), svcInf.HasSynced, sliceInf.HasSynced, podInf.HasSynced, polInf.HasSynced) {
		return nil // ctx ended
	}
	s.flush(ctx, recorder)
	s.ready.Store(true)
	defer s.ready.Store(false)
	s.log.Info("kubernetes control plane ready", "listen", lis.Addr().String(),
		"listeners", s.listeners.NumResources(), "clusters", s.clusters.NumResources())

	var wg sync.WaitGroup
	wg.Go(func() { s.loop(ctx, recorder) })
	err := controlplane.ServeADS(ctx, lis, s.mux, s.log, nil)
	cancel()
	wg.Wait()
	return err
}

// checkCRD fails with ErrNoCRD unless the API server serves MeshPolicies.
func (s *Server) checkCRD() error {
	list, err := s.client.Discovery().ServerResourcesForGroupVersion(MeshPolicyResource.GroupVersion().String())
	if apierrors.IsNotFound(err) {
		return ErrNoCRD
	}
	if err != nil {
		return fmt.Errorf("kubernetes control plane: discover %s: %w", MeshPolicyResource.GroupVersion(), err)
	}
	for _, r := range list.APIResources {
		if r.Name == MeshPolicyResource.Resource {
			return nil
		}
	}
	return ErrNoCRD
}

// mark applies a change to the state and wakes the loop.
func (s *Server) mark(change func()) {
	s.mu.Lock()
	change()
	s.mu.Unlock()
	select {
	case s.changed <- struct{}{}:
	default:
	}
}

// loop serves the changes marked, gathered for s.debounce after the first
// of a burst, until ctx ends.
func (s *Server) loop(ctx context.Context, recorder record.EventRecorder) {
	for {
		select {
		case <-ctx.Done():
			return
		case <-s.changed:
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(s.debounce):
		}
		s.flush(ctx, recorder)
	}
}

// flush serves what changed, reports Services it cannot serve, and writes
// the status of MeshPolicies whose status changed.
func (s *Server) flush(ctx context.Context, recorder record.EventRecorder) {
	s.mu.Lock()
	c := s.state.Flush()
	objs := make([]*unstructured.Unstructured, len(c.Statuses))
	for i, st := range c.Statuses {
		objs[i] = s.policies[key(st.Namespace, st.Name)]
	}
	s.mu.Unlock()

	s.apply(&c)
	for _, r := range c.Reports {
		k := key(r.Service.Namespace, r.Service.Name)
		switch {
		case r.Reason == "":
			s.log.Info("service now served in full", "service", k)
		case r.Skipped:
			s.log.Warn("service not served", "service", k, "reason", r.Reason)
			recorder.Event(r.Service, corev1.EventTypeWarning, EventReason, "Sluice does not serve this Service: "+r.Reason)
		default:
			s.log.Warn("service served in part", "service", k, "reason", r.Reason)
			recorder.Event(r.Service, corev1.EventTypeWarning, EventReason, "Sluice serves this Service in part: "+r.Reason)
		}
	}
	for i, st := range c.Statuses {
		if objs[i] != nil {
			s.writeStatus(ctx, objs[i], st)
		}
	}
}

// apply updates the caches so that an agent never sees a listener whose
// cluster or assignment is missing: assignments and clusters before the
// listeners that use them, listeners before the clusters and assignments
// they used are removed. Each cache notifies its watches as it is updated,
// in this order.
func (s *Server) apply(c *Changes) {
	if c.Empty() {
		return
	}
	update := func(lc *cache.LinearCache, u Update, set, del bool) {
		var toSet = u.Set
		var toDelete = u.Delete
		if !set {
			toSet = nil
		}
		if !del {
			toDelete = nil
		}
		if len(toSet) == 0 && len(toDelete) == 0 {
			return
		}
		if err := lc.UpdateResources(toSet, toDelete); err != nil {
			s.log.Error("notify xds watches", "error", err.Error())
		}
	}
	update(s.endpoints, c.Endpoints, true, false)
	update(s.clusters, c.Clusters, true, false)
	update(s.listeners, c.Listeners, true, true)
	update(s.clusters, c.Clusters, false, true)
	update(s.endpoints, c.Endpoints, false, true)
	s.log.Debug("xds resources updated",
		"listeners", len(c.Listeners.Set), "listeners_removed", len(c.Listeners.Delete),
		"clusters", len(c.Clusters.Set), "clusters_removed", len(c.Clusters.Delete),
		"assignments", len(c.Endpoints.Set), "assignments_removed", len(c.Endpoints.Delete))
}

func (s *Server) setPolicy(u *unstructured.Unstructured) {
	k := key(u.GetNamespace(), u.GetName())
	s.policies[k] = u
	p, err := DecodePolicy(u)
	if err != nil {
		if prev := s.state.policies[k]; prev == nil || prev.generation != u.GetGeneration() {
			s.log.Warn("meshpolicy invalid", "policy", k, "generation", u.GetGeneration(), "error", err.Error())
		}
	}
	s.state.SetPolicy(u.GetNamespace(), u.GetName(), u.GetGeneration(), p, err)
}

func (s *Server) deletePolicy(namespace, name string) {
	delete(s.policies, key(namespace, name))
	s.state.DeletePolicy(namespace, name)
}

// slim drops what the Server never reads from an object before the
// informers store it: managed fields everywhere, and all of a pod but its
// names, service account, node, host networking, phase and IPs, so that a
// large cluster's pods cost little memory.
func slim(o any) (any, error) {
	switch v := o.(type) {
	case *corev1.Pod:
		return &corev1.Pod{
			ObjectMeta: metav1.ObjectMeta{Name: v.Name, Namespace: v.Namespace, UID: v.UID, ResourceVersion: v.ResourceVersion},
			Spec:       corev1.PodSpec{ServiceAccountName: v.Spec.ServiceAccountName, NodeName: v.Spec.NodeName, HostNetwork: v.Spec.HostNetwork},
			Status:     corev1.PodStatus{Phase: v.Status.Phase, PodIP: v.Status.PodIP, PodIPs: v.Status.PodIPs},
		}, nil
	case metav1.Object:
		v.SetManagedFields(nil)
	}
	return o, nil
}
