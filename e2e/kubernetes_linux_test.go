package e2e_test

import (
	"context"
	"fmt"
	"net/netip"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"

	"github.com/sluice-mesh/sluice/e2e/cluster"
	"github.com/sluice-mesh/sluice/e2e/kube"
	"github.com/sluice-mesh/sluice/e2e/kubelet"
	"github.com/sluice-mesh/sluice/e2e/testenv"
)

// kubeMesh is Sluice installed in a Kubernetes cluster: a real API server
// and controllers, simulated kubelets on two nodes (one per cgroup layout),
// `sluice controlplane --kubernetes`, and an agent per node with
// --kubernetes.
type kubeMesh struct {
	t       *testing.T
	bin     string
	curl    string
	kube    *kube.ControlPlane
	client  kubernetes.Interface
	dyn     dynamic.Interface
	c       *cluster.Cluster
	kl      *kubelet.Kubelet
	cp      *cluster.ControlPlane
	agents  map[string]*cluster.Agent
	kconfig string // the kubeconfig agents and the control plane use
}

var kubeNodes = []kubelet.NodeConfig{
	{Name: "n1", Layout: kubelet.Systemd, Zone: "zone-a", Pods: netip.MustParsePrefix("10.244.1.0/24")},
	{Name: "n2", Layout: kubelet.Cgroupfs, Zone: "zone-b", Pods: netip.MustParsePrefix("10.244.2.0/24")},
}

func newKubeMesh(t *testing.T) *kubeMesh {
	t.Helper()
	testenv.RequirePrivileged(t)
	m := &kubeMesh{t: t, bin: buildSluice(t), curl: testenv.Tool(t, "curl"), agents: map[string]*cluster.Agent{}}
	m.kube = kube.StartForTest(t)
	cfg := m.kube.Config()
	m.client = kubernetes.NewForConfigOrDie(cfg)
	m.dyn = dynamic.NewForConfigOrDie(cfg)
	m.kconfig = m.kube.Kubeconfig()
	ctx := t.Context()
	crd, err := kube.ReadObjects(filepath.Join("..", "manifests", "meshpolicy-crd.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	if err := kube.Create(ctx, cfg, crd...); err != nil {
		t.Fatal(err)
	}
	if m.c, err = cluster.New(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			for name, a := range m.agents {
				t.Logf("agent %s log:\n%s", name, tailLines(a.Log(), 60))
			}
			if m.cp != nil {
				t.Logf("control plane log:\n%s", tailLines(m.cp.Log(), 60))
			}
		}
		if m.kl != nil {
			m.kl.Close()
		}
		if err := m.c.Close(); err != nil {
			t.Errorf("close cluster: %v", err)
		}
		if left, err := cluster.Leftovers(m.c.ID); err != nil || len(left) > 0 {
			t.Errorf("cluster left %v behind (%v)", left, err)
		}
	})
	if m.kl, err = kubelet.Start(ctx, kubelet.Config{Client: m.client, Cluster: m.c, Nodes: kubeNodes,
		Images: map[string]kubelet.Image{"sluice": {Path: m.bin}}}); err != nil {
		t.Fatal(err)
	}
	if m.cp, err = m.c.StartControlPlane(ctx, m.bin, nil, "--kubernetes", "--kubeconfig", m.kconfig); err != nil {
		t.Fatal(err)
	}
	for _, n := range kubeNodes {
		m.startAgent(n.Name)
	}
	return m
}

// startAgent starts the agent of node name and waits until it is ready.
func (m *kubeMesh) startAgent(name string) {
	m.t.Helper()
	a, err := m.kl.Node(name).StartAgent(cluster.AgentConfig{Binary: m.bin, ControlPlane: m.cp,
		Args: []string{"--kubernetes", "--kubeconfig", m.kconfig}})
	if err != nil {
		m.t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(m.t.Context(), 90*time.Second)
	defer cancel()
	if err := a.Ready(ctx); err != nil {
		m.t.Fatalf("agent %s not ready: %v\n%s", name, err, tailLines(a.Log(), 40))
	}
	m.agents[name] = a
}

func tailLines(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	return strings.Join(lines[max(0, len(lines)-n):], "\n")
}

// namespace creates namespace ns, enrolled in the mesh or not.
func (m *kubeMesh) namespace(ns string, enrolled bool) {
	m.t.Helper()
	obj := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}
	if enrolled {
		obj.Labels = map[string]string{"sluice.io/mesh": "enabled"}
	}
	if _, err := m.client.CoreV1().Namespaces().Create(m.t.Context(), obj, metav1.CreateOptions{}); err != nil {
		m.t.Fatal(err)
	}
}

// label sets (value non-empty) or removes label sluice.io/mesh of a
// namespace (pod "") or a pod.
func (m *kubeMesh) label(ns, pod, value string) {
	m.t.Helper()
	v := "null"
	if value != "" {
		v = `"` + value + `"`
	}
	patch := []byte(`{"metadata":{"labels":{"sluice.io/mesh":` + v + `}}}`)
	var err error
	if pod == "" {
		_, err = m.client.CoreV1().Namespaces().Patch(m.t.Context(), ns, types.MergePatchType, patch, metav1.PatchOptions{})
	} else {
		_, err = m.client.CoreV1().Pods(ns).Patch(m.t.Context(), pod, types.MergePatchType, patch, metav1.PatchOptions{})
	}
	if err != nil {
		m.t.Fatal(err)
	}
}

// serviceAccount creates service account name in ns.
func (m *kubeMesh) serviceAccount(ns, name string) {
	m.t.Helper()
	if _, err := m.client.CoreV1().ServiceAccounts(ns).Create(m.t.Context(), &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: name}}, metav1.CreateOptions{}); err != nil {
		m.t.Fatal(err)
	}
}

// backendSpec is a pod running the demo backend, answering HTTP on 8080
// with its pod name.
func backendSpec(sa string) corev1.PodSpec {
	return corev1.PodSpec{ServiceAccountName: sa, Containers: []corev1.Container{{
		Name: "app", Image: "sluice",
		Args:           []string{"demo-backend", "--name", "$(POD_NAME)", "--listen", ":8080"},
		Env:            []corev1.EnvVar{{Name: "POD_NAME", ValueFrom: &corev1.EnvVarSource{FieldRef: &corev1.ObjectFieldSelector{FieldPath: "metadata.name"}}}},
		Ports:          []corev1.ContainerPort{{Name: "http", ContainerPort: 8080}},
		ReadinessProbe: &corev1.Probe{ProbeHandler: corev1.ProbeHandler{TCPSocket: &corev1.TCPSocketAction{Port: intstr.FromString("http")}}},
	}}}
}

// deployment creates a Deployment of demo backends and a Service in front
// of it (port 80 → 8080), and returns the Service's ClusterIP.
func (m *kubeMesh) deployment(ns, name, sa string, replicas int32) string {
	m.t.Helper()
	ctx := m.t.Context()
	labels := map[string]string{"app": name}
	_, err := m.client.AppsV1().Deployments(ns).Create(ctx, kube.Deployment(ns, name, replicas, backendSpec(sa)), metav1.CreateOptions{})
	if err != nil {
		m.t.Fatal(err)
	}
	svc, err := m.client.CoreV1().Services(ns).Create(ctx, &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns},
		Spec:       corev1.ServiceSpec{Selector: labels, Ports: []corev1.ServicePort{{Name: "http", Port: 80, TargetPort: intstr.FromString("http")}}},
	}, metav1.CreateOptions{})
	if err != nil {
		m.t.Fatal(err)
	}
	return svc.Spec.ClusterIP
}

// waitPods waits until n pods of the Deployment ns/app run.
func (m *kubeMesh) waitPods(ns, app string, n int) {
	m.t.Helper()
	m.waitFor(fmt.Sprintf("%d %s pods", n, app), func() error {
		if got := m.runningPods(ns, app); len(got) != n {
			return fmt.Errorf("running %v", got)
		}
		return nil
	})
}

// scale sets the replicas of a Deployment.
func (m *kubeMesh) scale(ns, name string, replicas int32) {
	m.t.Helper()
	patch := fmt.Appendf(nil, `{"spec":{"replicas":%d}}`, replicas)
	if _, err := m.client.AppsV1().Deployments(ns).Patch(m.t.Context(), name, types.MergePatchType, patch, metav1.PatchOptions{}); err != nil {
		m.t.Fatal(err)
	}
}

// clientPod creates a pod on node that runs a demo backend (so that it
// lives), for curl to run in, and waits until it runs. It backs no
// Service: the destination's node knows who it is from the control
// plane's workload directory of its namespace.
func (m *kubeMesh) clientPod(ns, name, sa, node string) *cluster.Pod {
	m.t.Helper()
	spec := backendSpec(sa)
	spec.NodeSelector = map[string]string{"kubernetes.io/hostname": node}
	labels := map[string]string{"client": name}
	if _, err := m.client.CoreV1().Pods(ns).Create(m.t.Context(), &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns, Labels: labels}, Spec: spec,
	}, metav1.CreateOptions{}); err != nil {
		m.t.Fatal(err)
	}
	var pod *cluster.Pod
	m.waitFor(fmt.Sprintf("pod %s/%s to run", ns, name), func() error {
		p, ok := m.kl.Pod(ns, name)
		if !ok {
			return fmt.Errorf("not running; kubelet errors: %v", m.kl.Errors())
		}
		pod = p
		return nil
	})
	return pod
}

// get fetches url from pod with curl: the answer, or why there was none.
func (m *kubeMesh) get(pod *cluster.Pod, url string) (string, error) {
	ctx, cancel := context.WithTimeout(m.t.Context(), 10*time.Second)
	defer cancel()
	out, err := pod.Output(pod.Command(ctx, m.curl, "-sS", "--max-time", "3", url))
	return strings.TrimSpace(string(out)), err
}

// answers collects the names of the backends that answered n requests
// from pod to url; failed requests are counted under "error: ...".
func (m *kubeMesh) answers(pod *cluster.Pod, url string, n int) map[string]int {
	got := map[string]int{}
	for range n {
		out, err := m.get(pod, url)
		if err != nil {
			out = "error: " + firstLine(err.Error())
		} else if f := strings.Fields(out); len(f) > 0 {
			out = f[0] // the backend's name, before its address
		}
		got[out]++
	}
	return got
}

func firstLine(s string) string {
	s, _, _ = strings.Cut(s, "\n")
	return s
}

// runningPods returns the names of the running, ready pods of a
// Deployment.
func (m *kubeMesh) runningPods(ns, app string) []string {
	list, err := m.client.CoreV1().Pods(ns).List(m.t.Context(), metav1.ListOptions{LabelSelector: "app=" + app})
	if err != nil {
		m.t.Fatal(err)
	}
	var names []string
	for _, p := range list.Items {
		if p.DeletionTimestamp == nil && p.Status.PodIP != "" && kube.PodReady(&p) {
			names = append(names, p.Name)
		}
	}
	slices.Sort(names)
	return names
}

func (m *kubeMesh) waitFor(what string, check func() error) {
	m.t.Helper()
	deadline := time.Now().Add(90 * time.Second)
	for {
		err := check()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			m.t.Fatalf("waited 90s for %s: %v", what, err)
		}
		select {
		case <-m.t.Context().Done():
			m.t.Fatalf("waiting for %s: %v", what, context.Cause(m.t.Context()))
		case <-time.After(250 * time.Millisecond):
		}
	}
}

// reachesExactly waits until requests from pod to url are answered by
// every one of the pods names and by no other, without failures.
func (m *kubeMesh) reachesExactly(pod *cluster.Pod, url string, names []string) {
	m.t.Helper()
	m.waitFor(fmt.Sprintf("%s to reach exactly %v", url, names), func() error {
		got := m.answers(pod, url, 4*len(names)+4)
		if !sameKeys(got, names) {
			return fmt.Errorf("answers %v", got)
		}
		return nil
	})
}

// waitDenied waits until every request from pod to url fails.
func (m *kubeMesh) waitDenied(pod *cluster.Pod, url, what string) {
	m.t.Helper()
	m.waitFor(what, func() error {
		if got := m.answers(pod, url, 3); len(got) != 1 || !strings.HasPrefix(firstKey(got), "error") {
			return fmt.Errorf("answers %v", got)
		}
		return nil
	})
}

func sameKeys(m map[string]int, keys []string) bool {
	if len(m) != len(keys) {
		return false
	}
	for _, k := range keys {
		if m[k] == 0 {
			return false
		}
	}
	return true
}

// policy creates a MeshPolicy from its spec.
func (m *kubeMesh) policy(ns, name string, spec map[string]any) {
	m.t.Helper()
	u := &unstructured.Unstructured{Object: map[string]any{
		"apiVersion": "sluice.io/v1alpha1", "kind": "MeshPolicy",
		"metadata": map[string]any{"name": name, "namespace": ns},
		"spec":     spec,
	}}
	if _, err := m.dyn.Resource(kube.MeshPolicyResource).Namespace(ns).Create(m.t.Context(), u, metav1.CreateOptions{}); err != nil {
		m.t.Fatal(err)
	}
}

// policyCondition returns the status and message of a MeshPolicy's
// Accepted condition.
func (m *kubeMesh) policyCondition(ns, name string) (string, string) {
	u, err := m.dyn.Resource(kube.MeshPolicyResource).Namespace(ns).Get(m.t.Context(), name, metav1.GetOptions{})
	if err != nil {
		m.t.Fatal(err)
	}
	conds, _, _ := unstructured.NestedSlice(u.Object, "status", "conditions")
	for _, c := range conds {
		if c, ok := c.(map[string]any); ok && c["type"] == "Accepted" {
			status, _ := c["status"].(string)
			msg, _ := c["message"].(string)
			return status, msg
		}
	}
	return "", ""
}

// Sluice installed in Kubernetes: a Deployment behind a Service is reached
// through its ClusterIP by real clients on both nodes; scaling and pod
// deletion shift traffic; a MeshPolicy allows and denies by service account
// across nodes; enrolling and un-enrolling takes effect; an agent restart
// loses nothing.
func TestKubernetes(t *testing.T) {
	m := newKubeMesh(t)
	m.namespace("shop", true)
	m.namespace("other", false)
	for _, sa := range []string{"web", "frontend", "batch"} {
		m.serviceAccount("shop", sa)
	}
	m.serviceAccount("other", "frontend")
	vip := m.deployment("shop", "web", "web", 2)
	url := "http://" + vip + "/"
	front := m.clientPod("shop", "frontend", "frontend", "n1")
	batch := m.clientPod("shop", "batch", "batch", "n2")
	outsider := m.clientPod("other", "outsider", "frontend", "n2")

	t.Run("ClusterIP", func(t *testing.T) {
		m.waitPods("shop", "web", 2)
		web := m.runningPods("shop", "web")
		m.reachesExactly(front, url, web)
		m.reachesExactly(batch, url, web)
	})

	t.Run("ScaleAndDelete", func(t *testing.T) {
		m.scale("shop", "web", 3)
		m.waitPods("shop", "web", 3)
		m.reachesExactly(front, url, m.runningPods("shop", "web"))
		victim := m.runningPods("shop", "web")[0]
		if err := m.client.CoreV1().Pods("shop").Delete(m.t.Context(), victim, metav1.DeleteOptions{}); err != nil {
			t.Fatal(err)
		}
		// The ReplicaSet replaces it; traffic goes to the pods that run.
		m.waitFor("the deleted pod to be replaced", func() error {
			got := m.runningPods("shop", "web")
			if len(got) != 3 || slices.Contains(got, victim) {
				return fmt.Errorf("running %v", got)
			}
			return nil
		})
		m.reachesExactly(batch, url, m.runningPods("shop", "web"))
		m.scale("shop", "web", 2)
		m.waitPods("shop", "web", 2)
		m.reachesExactly(front, url, m.runningPods("shop", "web"))
	})

	t.Run("Policy", func(t *testing.T) {
		m.policy("shop", "web-callers", map[string]any{
			"selector": map[string]any{"matchLabels": map[string]any{"app": "web"}},
			"action":   "ALLOW",
			"rules": []any{
				map[string]any{"name": "frontend", "from": []any{map[string]any{"serviceAccounts": []any{"frontend"}}}, "ports": []any{int64(8080)}},
				map[string]any{"name": "other-ns", "from": []any{map[string]any{"namespaces": []any{"other"}}}},
			},
		})
		m.waitFor("the policy to be accepted", func() error {
			if s, msg := m.policyCondition("shop", "web-callers"); s != "True" {
				return fmt.Errorf("Accepted=%q: %s", s, msg)
			}
			return nil
		})
		web := m.runningPods("shop", "web")
		// frontend (n1) is allowed to pods on both nodes; batch (n2) is not.
		// frontend backs no Service: n2 knows it from the workload
		// directory of shop (without it, n2 refuses it as unknown).
		m.reachesExactly(front, url, web)
		m.waitDenied(batch, url, "batch to be denied")
		// A pod of a namespace not enrolled has no identity: denied.
		if got := m.answers(outsider, url, 3); len(got) != 1 || !strings.Contains(firstKey(got), "error") {
			t.Errorf("un-enrolled pod: answers %v, want every request denied", got)
		}
		// An invalid policy is reported, and changes nothing.
		m.policy("shop", "broken", map[string]any{"rules": []any{
			map[string]any{"from": []any{map[string]any{"ipBlocks": []any{"10.0.0.0/33"}}}},
		}})
		m.waitFor("the invalid policy to be reported", func() error {
			s, msg := m.policyCondition("shop", "broken")
			if s != "False" || !strings.Contains(msg, "ipBlocks") {
				return fmt.Errorf("Accepted=%q: %q", s, msg)
			}
			return nil
		})
		m.reachesExactly(front, url, web)
	})

	t.Run("Enrolment", func(t *testing.T) {
		web := m.runningPods("shop", "web")
		m.label("other", "", "enabled")
		m.reachesExactly(outsider, url, web)
		m.label("other", "outsider", "disabled")
		m.waitDenied(outsider, url, "the opted-out pod to be denied")
		m.label("other", "outsider", "")
		m.reachesExactly(outsider, url, web)
		m.label("other", "", "")
		m.waitDenied(outsider, url, "the un-enrolled namespace's pod to be denied")
	})

	t.Run("AgentRestart", func(t *testing.T) {
		web := m.runningPods("shop", "web")
		a := m.agents["n1"]
		if err := a.Stop(); err != nil {
			t.Logf("agent n1 stopped: %v", err)
		}
		// The datapath stays in place while no agent runs.
		m.reachesExactly(front, url, web)
		late := m.clientPod("shop", "late", "frontend", "n1")
		m.startAgent("n1")
		m.reachesExactly(front, url, web)
		if got := m.answers(batch, url, 3); len(got) != 1 || !strings.Contains(firstKey(got), "error") {
			t.Errorf("batch after n1's agent restart: answers %v, want denied", got)
		}
		// A pod that started while the agent was away is known.
		m.reachesExactly(late, url, web)
	})
	if err := m.kl.Errors(); err != nil {
		t.Errorf("kubelet: %v", err)
	}
}

func firstKey(m map[string]int) string {
	for k := range m {
		return k
	}
	return ""
}
