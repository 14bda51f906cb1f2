package kube_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	rbacv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/rbac/v3"
	discoverygrpc "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/util/intstr"
	k8syaml "k8s.io/apimachinery/pkg/util/yaml"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/util/retry"

	"github.com/sluice-mesh/sluice/dataplane/model"
	e2ekube "github.com/sluice-mesh/sluice/e2e/kube"
	sluicexds "github.com/sluice-mesh/sluice/xds"
	"github.com/sluice-mesh/sluice/xds/kube"
	"github.com/sluice-mesh/sluice/xds/mesh"
)

// waitTimeout bounds every wait for the API server's controllers or the
// control plane: generous, the machine may be busy; nothing here asserts
// how fast anything is.
const waitTimeout = 2 * time.Minute

// TestAgainstAPIServer runs the control plane against a real API server
// and controller manager (e2e/kube: built on first use, a quarter of an
// hour; run with -timeout 30m) and checks what a real ADS client is served.
func TestAgainstAPIServer(t *testing.T) {
	cp := e2ekube.StartForTest(t)
	cfg := cp.Config()
	client, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	dyn, err := dynamic.NewForConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx := t.Context()
	installCRD(t, client, dyn)

	const ns = "demo"
	must(t, create(ctx, client.CoreV1().Namespaces(), &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}))
	must(t, create(ctx, client.CoreV1().Nodes(), &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "node-a"}}))
	must(t, create(ctx, client.CoreV1().ServiceAccounts(ns), &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: "web"}}))
	dual := corev1.IPFamilyPolicyRequireDualStack
	must(t, create(ctx, client.CoreV1().Services(ns), &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: "web"},
		Spec: corev1.ServiceSpec{
			Selector:       map[string]string{"app": "web"},
			IPFamilyPolicy: &dual,
			Ports:          []corev1.ServicePort{{Name: "http", Port: 80, TargetPort: intstr.FromString("http")}},
		},
	}))
	must(t, create(ctx, client.CoreV1().Services(ns), &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: "db"},
		Spec: corev1.ServiceSpec{ClusterIP: corev1.ClusterIPNone, Selector: map[string]string{"app": "db"},
			Ports: []corev1.ServicePort{{Port: 5432}}},
	}))
	must(t, create(ctx, client.CoreV1().Services(ns), &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: "ext"},
		Spec:       corev1.ServiceSpec{Type: corev1.ServiceTypeExternalName, ExternalName: "db.example.org"},
	}))
	for i, ip := range []string{"10.244.1.10", "10.244.1.11"} {
		runPod(t, client, ns, fmt.Sprintf("web-%d", i), ip)
	}
	// A policy valid from the start, and one that never is.
	must(t, createPolicy(ctx, dyn, ns, "web-policy", map[string]any{
		"selector": map[string]any{"matchLabels": map[string]any{"app": "web"}},
		"rules":    []any{map[string]any{"name": "from-demo", "from": []any{map[string]any{"namespaces": []any{"demo"}}}, "ports": []any{int64(8080)}}},
	}))
	must(t, createPolicy(ctx, dyn, ns, "bad", map[string]any{
		"rules": []any{map[string]any{"from": []any{map[string]any{"ipBlocks": []any{"10.0.0.0/33"}}}}},
	}))

	stop1 := startServer(t, client, dyn)
	if stop1.srv.Ready() {
		t.Error("the control plane is ready before it has read the cluster")
	}
	xds := dialDelta(t, stop1.addr)
	waitFor(t, "the control plane to be ready", func() error {
		if !stop1.srv.Ready() {
			return errors.New("not ready")
		}
		return nil
	})

	waitFor(t, "demo/web:80 served with two healthy endpoints of pods web-0 and web-1", func() error {
		return checkEndpoints(xds, "demo/web:80", map[string]string{"10.244.1.10": "HEALTHY", "10.244.1.11": "HEALTHY"})
	})
	cla := xds.get(resource.EndpointType, "demo/web:80").(*endpointv3.ClusterLoadAssignment)
	for _, g := range cla.Endpoints {
		for _, e := range g.LbEndpoints {
			w := e.GetMetadata().GetFilterMetadata()[mesh.WorkloadMetadata].GetFields()
			addr := e.GetEndpoint().GetAddress().GetSocketAddress()
			if addr.GetPortValue() != 8080 {
				t.Errorf("endpoint %s port %d, want the named target port resolved to 8080", addr.GetAddress(), addr.GetPortValue())
			}
			want := map[string]string{"spiffe_id": "spiffe://cluster.local/ns/demo/sa/web", "namespace": "demo", "service_account": "web", "node": "node-a"}
			for k, v := range want {
				if got := w[k].GetStringValue(); got != v {
					t.Errorf("endpoint %s metadata %s = %q, want %q", addr.GetAddress(), k, got, v)
				}
			}
			if !strings.HasPrefix(w["workload"].GetStringValue(), "web-") {
				t.Errorf("endpoint %s workload %q, want its pod", addr.GetAddress(), w["workload"].GetStringValue())
			}
		}
	}
	l := xds.get(resource.ListenerType, "demo/web:80").(*listenerv3.Listener)
	if n := 1 + len(l.AdditionalAddresses); n != 2 {
		t.Errorf("listener demo/web:80 has %d addresses, want both cluster IPs of the dual-stack Service", n)
	}

	// A state-of-the-world client gets the same listeners and assignment.
	checkSotW(t, stop1.addr, xds.names(resource.ListenerType), "demo/web:80", cla)

	// The agent's own client, in both modes, accepts and applies it all.
	for _, mode := range []sluicexds.Mode{sluicexds.ModeDelta, sluicexds.ModeSotW} {
		checkAgentClient(t, stop1.addr, mode)
	}

	// The valid policy: an RBAC filter, status accepted and covering web.
	waitFor(t, "the RBAC filter of web-policy on demo/web:80", func() error {
		l, _ := xds.get(resource.ListenerType, "demo/web:80").(*listenerv3.Listener)
		if got := rbacPolicies(l); !slices.Equal(got, []string{"web-policy"}) {
			return fmt.Errorf("RBAC filters %v, want web-policy alone", got)
		}
		return nil
	})
	waitFor(t, "web-policy accepted, covering demo/web", func() error {
		return checkStatus(ctx, dyn, ns, "web-policy", "True", "Accepted", "", []string{"demo/web"})
	})
	waitFor(t, "bad refused, naming the field", func() error {
		return checkStatus(ctx, dyn, ns, "bad", "False", "Invalid", `spec.rules[0].from[0].ipBlocks[0]: "10.0.0.0/33" is not an address or CIDR`, nil)
	})

	// Unsupported Services: not served, an Event each.
	for _, name := range []string{"db", "ext"} {
		waitFor(t, "an Unsupported event on Service "+name, func() error {
			evs, err := client.CoreV1().Events(ns).List(ctx, metav1.ListOptions{FieldSelector: "involvedObject.kind=Service,involvedObject.name=" + name})
			if err != nil {
				return err
			}
			for _, e := range evs.Items {
				if e.Reason == kube.EventReason {
					return nil
				}
			}
			return fmt.Errorf("%d events, none with reason %s", len(evs.Items), kube.EventReason)
		})
	}
	for _, name := range xds.names(resource.ListenerType) {
		if strings.HasPrefix(name, "demo/db:") || strings.HasPrefix(name, "demo/ext:") {
			t.Errorf("listener %s served for an unsupported Service", name)
		}
	}

	// Scaling: a third pod joins; one becomes unready; one is deleted.
	runPod(t, client, ns, "web-2", "10.244.1.12")
	waitFor(t, "three healthy endpoints", func() error {
		return checkEndpoints(xds, "demo/web:80", map[string]string{"10.244.1.10": "HEALTHY", "10.244.1.11": "HEALTHY", "10.244.1.12": "HEALTHY"})
	})
	setReady(t, client, ns, "web-1", false)
	deletePod(t, client, ns, "web-0")
	waitFor(t, "web-0 gone and web-1 unhealthy", func() error {
		return checkEndpoints(xds, "demo/web:80", map[string]string{"10.244.1.11": "UNHEALTHY", "10.244.1.12": "HEALTHY"})
	})

	// An invalid edit of the served policy keeps the served version.
	must(t, retry.RetryOnConflict(retry.DefaultRetry, func() error {
		u, err := dyn.Resource(kube.MeshPolicyResource).Namespace(ns).Get(ctx, "web-policy", metav1.GetOptions{})
		if err != nil {
			return err
		}
		u.Object["spec"].(map[string]any)["action"] = "AUDIT"
		u.Object["spec"].(map[string]any)["dryRun"] = true
		_, err = dyn.Resource(kube.MeshPolicyResource).Namespace(ns).Update(ctx, u, metav1.UpdateOptions{})
		return err
	}))
	waitFor(t, "web-policy refused for dryRun with AUDIT, still served", func() error {
		return checkStatus(ctx, dyn, ns, "web-policy", "False", "Invalid", "spec.dryRun: an AUDIT policy", []string{"demo/web"})
	})
	if got := rbacPolicies(xds.get(resource.ListenerType, "demo/web:80").(*listenerv3.Listener)); !slices.Equal(got, []string{"web-policy"}) {
		t.Errorf("after an invalid edit, RBAC filters %v, want web-policy still", got)
	}

	// Restart: a new control plane serves the same, complete, from its
	// first response on.
	before := xds.snapshot()
	stop1.stop()
	stop2 := startServer(t, client, dyn)
	xds2 := dialDelta(t, stop2.addr)
	first := xds2.firstNames(t, resource.ListenerType)
	if !slices.Contains(first, "demo/web:80") {
		t.Errorf("first listener response after a restart: %v, want demo/web:80 in it", first)
	}
	// The invalid edit is the current version: after a restart there is no
	// earlier valid one to keep, so the Service is served without it.
	delete(before[resource.ListenerType], "demo/web:80")
	waitFor(t, "the restarted control plane to serve the same state", func() error {
		after := xds2.snapshot()
		if got := rbacPolicies(asListener(after[resource.ListenerType]["demo/web:80"])); len(got) != 0 {
			return fmt.Errorf("RBAC filters %v after a restart with the policy invalid, want none", got)
		}
		delete(after[resource.ListenerType], "demo/web:80")
		return sameResources(before, after)
	})
	waitFor(t, "web-policy refused and not served after the restart", func() error {
		return checkStatus(ctx, dyn, ns, "web-policy", "False", "Invalid", "spec.dryRun: an AUDIT policy", nil)
	})
}

func asListener(m proto.Message) *listenerv3.Listener {
	l, _ := m.(*listenerv3.Listener)
	return l
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

func create[T any](ctx context.Context, c interface {
	Create(context.Context, T, metav1.CreateOptions) (T, error)
}, obj T) error {
	_, err := c.Create(ctx, obj, metav1.CreateOptions{})
	return err
}

var crdResource = schema.GroupVersionResource{Group: "apiextensions.k8s.io", Version: "v1", Resource: "customresourcedefinitions"}

// installCRD creates the MeshPolicy CRD from the manifests and waits until
// the API server serves it.
func installCRD(t *testing.T, client kubernetes.Interface, dyn dynamic.Interface) {
	t.Helper()
	f, err := os.Open("../../manifests/meshpolicy-crd.yaml")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var obj map[string]any
	if err := k8syaml.NewYAMLOrJSONDecoder(f, 4096).Decode(&obj); err != nil {
		t.Fatalf("decode the CRD: %v", err)
	}
	if _, err := dyn.Resource(crdResource).Create(t.Context(), &unstructured.Unstructured{Object: obj}, metav1.CreateOptions{}); err != nil {
		t.Fatalf("create the CRD: %v", err)
	}
	waitFor(t, "the MeshPolicy resource to be served", func() error {
		_, err := client.Discovery().ServerResourcesForGroupVersion(kube.MeshPolicyResource.GroupVersion().String())
		return err
	})
}

func createPolicy(ctx context.Context, dyn dynamic.Interface, ns, name string, spec map[string]any) error {
	u := &unstructured.Unstructured{Object: map[string]any{
		"apiVersion": "sluice.io/v1alpha1", "kind": "MeshPolicy",
		"metadata": map[string]any{"name": name, "namespace": ns},
		"spec":     spec,
	}}
	_, err := dyn.Resource(kube.MeshPolicyResource).Namespace(ns).Create(ctx, u, metav1.CreateOptions{})
	return err
}

// checkStatus checks a MeshPolicy's status: condition Accepted, a message
// starting with message, coveredServices and the observed generation.
func checkStatus(ctx context.Context, dyn dynamic.Interface, ns, name, status, reason, message string, covered []string) error {
	u, err := dyn.Resource(kube.MeshPolicyResource).Namespace(ns).Get(ctx, name, metav1.GetOptions{})
	if err != nil {
		return err
	}
	gen, _, _ := unstructured.NestedInt64(u.Object, "status", "observedGeneration")
	if gen != u.GetGeneration() {
		return fmt.Errorf("observedGeneration %d, generation %d", gen, u.GetGeneration())
	}
	got, _, _ := unstructured.NestedStringSlice(u.Object, "status", "coveredServices")
	if !slices.Equal(got, covered) {
		return fmt.Errorf("coveredServices %v, want %v", got, covered)
	}
	conds, _, _ := unstructured.NestedSlice(u.Object, "status", "conditions")
	for _, c := range conds {
		m := c.(map[string]any)
		if m["type"] != kube.ConditionAccepted {
			continue
		}
		if m["status"] != status || m["reason"] != reason || !strings.HasPrefix(fmt.Sprint(m["message"]), message) {
			return fmt.Errorf("Accepted %v %v %q, want %s %s %q…", m["status"], m["reason"], m["message"], status, reason, message)
		}
		return nil
	}
	return fmt.Errorf("no Accepted condition in %v", u.Object["status"])
}

// runPod creates pod name labelled app=web, running as service account
// web, binds it to node-a and reports it running and ready at ip, as a
// scheduler and a kubelet would.
func runPod(t *testing.T, client kubernetes.Interface, ns, name, ip string) {
	t.Helper()
	ctx := t.Context()
	must(t, create(ctx, client.CoreV1().Pods(ns), &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name, Labels: map[string]string{"app": "web"}},
		Spec: corev1.PodSpec{ServiceAccountName: "web", Containers: []corev1.Container{{
			Name: "web", Image: "registry.invalid/web:1",
			Ports: []corev1.ContainerPort{{Name: "http", ContainerPort: 8080}},
		}}},
	}))
	e2ekube.BindAndRun(t, client, ns, name, "node-a", ip)
}

func setReady(t *testing.T, client kubernetes.Interface, ns, name string, ready bool) {
	t.Helper()
	status := corev1.ConditionFalse
	if ready {
		status = corev1.ConditionTrue
	}
	updatePodStatus(t, client, ns, name, func(p *corev1.Pod) {
		for i, c := range p.Status.Conditions {
			if c.Type == corev1.PodReady || c.Type == corev1.ContainersReady {
				p.Status.Conditions[i].Status = status
				p.Status.Conditions[i].LastTransitionTime = metav1.Now()
			}
		}
	})
}

func updatePodStatus(t *testing.T, client kubernetes.Interface, ns, name string, change func(*corev1.Pod)) {
	t.Helper()
	ctx := t.Context()
	err := retry.RetryOnConflict(retry.DefaultRetry, func() error {
		p, err := client.CoreV1().Pods(ns).Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			return err
		}
		change(p)
		_, err = client.CoreV1().Pods(ns).UpdateStatus(ctx, p, metav1.UpdateOptions{})
		return err
	})
	if err != nil {
		t.Fatalf("set status of pod %s: %v", name, err)
	}
}

// deletePod deletes a pod at once: there is no kubelet to confirm a
// graceful deletion.
func deletePod(t *testing.T, client kubernetes.Interface, ns, name string) {
	t.Helper()
	zero := int64(0)
	if err := client.CoreV1().Pods(ns).Delete(t.Context(), name, metav1.DeleteOptions{GracePeriodSeconds: &zero}); err != nil {
		t.Fatalf("delete pod %s: %v", name, err)
	}
}

type running struct {
	srv  *kube.Server
	addr string
	stop func()
}

// startServer runs a kube.Server on a loopback listener until stop is
// called or the test ends.
func startServer(t *testing.T, client kubernetes.Interface, dyn dynamic.Interface) running {
	t.Helper()
	srv, err := kube.New(kube.Options{Client: client, Dynamic: dyn, Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ctx, lis) }()
	var once sync.Once
	stop := func() {
		once.Do(func() {
			cancel()
			if err := <-done; err != nil {
				t.Errorf("serve: %v", err)
			}
		})
	}
	t.Cleanup(stop)
	return running{srv: srv, addr: lis.Addr().String(), stop: stop}
}

// deltaClient is a delta ADS client subscribed to every listener, cluster
// and assignment, acknowledging everything and keeping what it was sent.
type deltaClient struct {
	mu        sync.Mutex
	resources map[string]map[string]proto.Message // type → name → resource
	first     map[string][]string                 // type → names in the first response
	firstSeen chan string                         // receives a type when its first response arrives
}

func dialDelta(t *testing.T, addr string) *deltaClient {
	t.Helper()
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	st, err := discoverygrpc.NewAggregatedDiscoveryServiceClient(conn).DeltaAggregatedResources(ctx, grpc.WaitForReady(true))
	if err != nil {
		t.Fatal(err)
	}
	c := &deltaClient{resources: map[string]map[string]proto.Message{}, first: map[string][]string{}, firstSeen: make(chan string, 3)}
	node := &corev3.Node{Id: "test-node"}
	for _, typ := range []string{resource.ListenerType, resource.ClusterType, resource.EndpointType} {
		c.resources[typ] = map[string]proto.Message{}
		if err := st.Send(&discoverygrpc.DeltaDiscoveryRequest{Node: node, TypeUrl: typ}); err != nil {
			t.Fatal(err)
		}
	}
	var wg sync.WaitGroup
	wg.Go(func() {
		for {
			resp, err := st.Recv()
			if err != nil {
				if ctx.Err() == nil && !errors.Is(err, io.EOF) {
					t.Logf("delta stream: %v", err)
				}
				return
			}
			c.mu.Lock()
			m := c.resources[resp.TypeUrl]
			_, seen := c.first[resp.TypeUrl]
			for _, r := range resp.Resources {
				msg, err := anypb.UnmarshalNew(r.Resource, proto.UnmarshalOptions{})
				if err != nil {
					t.Errorf("unmarshal %s: %v", r.Name, err)
					continue
				}
				m[r.Name] = msg
				if !seen {
					c.first[resp.TypeUrl] = append(c.first[resp.TypeUrl], r.Name)
				}
			}
			for _, name := range resp.RemovedResources {
				delete(m, name)
			}
			if !seen {
				if c.first[resp.TypeUrl] == nil {
					c.first[resp.TypeUrl] = []string{}
				}
				c.firstSeen <- resp.TypeUrl
			}
			c.mu.Unlock()
			if err := st.Send(&discoverygrpc.DeltaDiscoveryRequest{TypeUrl: resp.TypeUrl, ResponseNonce: resp.Nonce}); err != nil {
				return
			}
		}
	})
	t.Cleanup(func() { cancel(); wg.Wait() })
	return c
}

func (c *deltaClient) get(typ, name string) proto.Message {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.resources[typ][name]
}

func (c *deltaClient) names(typ string) []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return keys(c.resources[typ])
}

func (c *deltaClient) snapshot() map[string]map[string]proto.Message {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := map[string]map[string]proto.Message{}
	for typ, m := range c.resources {
		out[typ] = map[string]proto.Message{}
		for name, r := range m {
			out[typ][name] = r
		}
	}
	return out
}

// firstNames waits for the first response of type typ and returns the
// names it held.
func (c *deltaClient) firstNames(t *testing.T, typ string) []string {
	t.Helper()
	deadline := time.After(waitTimeout)
	for {
		c.mu.Lock()
		names, ok := c.first[typ]
		c.mu.Unlock()
		if ok {
			return names
		}
		select {
		case <-c.firstSeen:
		case <-deadline:
			t.Fatalf("no %s response within %v", typ, waitTimeout)
		}
	}
}

func sameResources(a, b map[string]map[string]proto.Message) error {
	for typ := range a {
		if !slices.Equal(keys(a[typ]), keys(b[typ])) {
			return fmt.Errorf("%s: %v, want %v", typ, keys(b[typ]), keys(a[typ]))
		}
		for name, r := range a[typ] {
			if !proto.Equal(r, b[typ][name]) {
				return fmt.Errorf("%s %s differs", typ, name)
			}
		}
	}
	return nil
}

// checkEndpoints checks the health of every endpoint of an assignment.
func checkEndpoints(c *deltaClient, name string, want map[string]string) error {
	cla, _ := c.get(resource.EndpointType, name).(*endpointv3.ClusterLoadAssignment)
	if cla == nil {
		if c.get(resource.ListenerType, name) != nil {
			return fmt.Errorf("listener %s served without its assignment", name)
		}
		return fmt.Errorf("no assignment %s", name)
	}
	if c.get(resource.ListenerType, name) == nil || c.get(resource.ClusterType, name) == nil {
		return fmt.Errorf("assignment %s without its listener or cluster", name)
	}
	got := map[string]string{}
	for _, g := range cla.Endpoints {
		for _, e := range g.LbEndpoints {
			got[e.GetEndpoint().GetAddress().GetSocketAddress().GetAddress()] = e.GetHealthStatus().String()
		}
	}
	if len(got) != len(want) {
		return fmt.Errorf("endpoints %v, want %v", got, want)
	}
	for a, h := range want {
		if got[a] != h {
			return fmt.Errorf("endpoints %v, want %v", got, want)
		}
	}
	return nil
}

// rbacPolicies returns the stat prefixes (policy names) of l's RBAC
// filters.
func rbacPolicies(l *listenerv3.Listener) []string {
	var out []string
	for _, fc := range l.GetFilterChains() {
		for _, f := range fc.GetFilters() {
			if f.GetName() != mesh.RBACFilter {
				continue
			}
			var cfg rbacv3.RBAC
			if err := f.GetTypedConfig().UnmarshalTo(&cfg); err == nil {
				out = append(out, cfg.GetStatPrefix())
			}
		}
	}
	return out
}

func waitFor(t *testing.T, what string, check func() error) {
	t.Helper()
	e2ekube.WaitFor(t, waitTimeout, what, check)
}

// testLogger logs to t.
func testLogger(t *testing.T) *slog.Logger {
	return slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelInfo}))
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimSuffix(string(p), "\n"))
	return len(p), nil
}

// checkSotW asks for every listener and for assignment name over a
// state-of-the-world stream and checks it gets listeners and cla.
func checkSotW(t *testing.T, addr string, listeners []string, name string, cla proto.Message) {
	t.Helper()
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(t.Context(), waitTimeout)
	defer cancel()
	st, err := discoverygrpc.NewAggregatedDiscoveryServiceClient(conn).StreamAggregatedResources(ctx)
	if err != nil {
		t.Fatal(err)
	}
	node := &corev3.Node{Id: "sotw-node"}
	for _, req := range []*discoverygrpc.DiscoveryRequest{
		{Node: node, TypeUrl: resource.ListenerType},
		{Node: node, TypeUrl: resource.EndpointType, ResourceNames: []string{name}},
	} {
		if err := st.Send(req); err != nil {
			t.Fatal(err)
		}
		resp, err := st.Recv()
		if err != nil {
			t.Fatalf("sotw %s: %v", req.TypeUrl, err)
		}
		var got []string
		for _, r := range resp.Resources {
			msg, err := anypb.UnmarshalNew(r, proto.UnmarshalOptions{})
			if err != nil {
				t.Fatal(err)
			}
			switch m := msg.(type) {
			case *listenerv3.Listener:
				got = append(got, m.Name)
			case *endpointv3.ClusterLoadAssignment:
				got = append(got, m.ClusterName)
				if !proto.Equal(m, cla) {
					t.Errorf("sotw assignment %s differs from the delta one", m.ClusterName)
				}
			}
		}
		slices.Sort(got)
		want := listeners
		if req.TypeUrl == resource.EndpointType {
			want = []string{name}
		}
		if !slices.Equal(got, want) {
			t.Errorf("sotw %s: %v, want %v", req.TypeUrl, got, want)
		}
	}
}

// applied records the states an xds.Client applies.
type applied struct {
	mu   sync.Mutex
	last model.State
}

func (a *applied) Apply(s model.State) error {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.last = s
	return nil
}

// checkAgentClient runs Sluice's xDS client against the control plane and
// waits until it has applied both addresses of demo/web:80, having
// rejected nothing.
func checkAgentClient(t *testing.T, addr string, mode sluicexds.Mode) {
	t.Helper()
	a := &applied{}
	c, err := sluicexds.New(sluicexds.Options{Server: addr, Node: sluicexds.NodeInfo{ID: "agent-" + fmt.Sprint(mode)}, Applier: a, Mode: mode})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = c.Run(ctx)
	}()
	defer func() { cancel(); <-done }()
	waitFor(t, fmt.Sprintf("the agent's client (mode %v) to apply demo/web:80", mode), func() error {
		if st := c.Status(); st.NACKs > 0 {
			t.Fatalf("the agent's client rejected resources: %+v", st.LastNACK)
		}
		a.mu.Lock()
		defer a.mu.Unlock()
		// The pods have IPv4 addresses only: the IPv6 cluster IP has no
		// endpoint of its family.
		var v4, v6 int
		for _, svc := range a.last.Services {
			switch {
			case svc.Port != 80:
			case svc.VIP.Is4() && len(svc.Endpoints) == 2:
				v4++
			case svc.VIP.Is6() && len(svc.Endpoints) == 0:
				v6++
			}
		}
		if v4 != 1 || v6 != 1 {
			return fmt.Errorf("applied %d services; want demo/web:80 on its IPv4 cluster IP with 2 endpoints and on its IPv6 one with none", len(a.last.Services))
		}
		return nil
	})
}
