package kubelet_test

import (
	"context"
	"fmt"
	"maps"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/kubernetes"

	"github.com/sluice-mesh/sluice/e2e/cluster"
	"github.com/sluice-mesh/sluice/e2e/kube"
	"github.com/sluice-mesh/sluice/e2e/kubelet"
	"github.com/sluice-mesh/sluice/e2e/testenv"
)

func TestMain(m *testing.M) { testenv.Main(m) }

const waitTimeout = 90 * time.Second

// The simulated kubelet runs a Deployment's pods on two nodes of different
// cgroup layouts: real processes in the right cgroups, reachable at the
// addresses the API reports, published by the EndpointSlice controller;
// restarts containers in new cgroups, and removes deleted pods whole.
func TestKubelet(t *testing.T) {
	testenv.RequirePrivileged(t)
	curl := testenv.Tool(t, "curl")
	cp := kube.StartForTest(t)
	client := kubernetes.NewForConfigOrDie(cp.Config())
	c, err := cluster.New()
	if err != nil {
		t.Fatal(err)
	}
	closed := false
	t.Cleanup(func() {
		if !closed {
			c.Close()
		}
	})
	bin := filepath.Join(t.TempDir(), "sluice")
	if out, err := exec.Command("go", "build", "-o", bin, "github.com/sluice-mesh/sluice/cmd/sluice").CombinedOutput(); err != nil {
		t.Fatalf("build sluice: %v\n%s", err, out)
	}
	ctx := t.Context()
	kl, err := kubelet.Start(ctx, kubelet.Config{
		Client: client, Cluster: c,
		Nodes: []kubelet.NodeConfig{
			{Name: "n1", Layout: kubelet.Systemd, Zone: "z1", Pods: netip.MustParsePrefix("10.244.1.0/24")},
			{Name: "n2", Layout: kubelet.Cgroupfs, Zone: "z2", Pods: netip.MustParsePrefix("10.244.2.0/24")},
		},
		Images: map[string]kubelet.Image{"sluice": {Path: bin}},
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(kl.Close)

	ns := "web"
	if _, err := client.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	labels := map[string]string{"app": "web"}
	_, err = client.AppsV1().Deployments(ns).Create(ctx, kube.Deployment(ns, "web", 2, corev1.PodSpec{Containers: []corev1.Container{{
		Name: "web", Image: "sluice",
		Args:           []string{"demo-backend", "--name", "$(POD_NAME)", "--listen", ":8080"},
		Env:            []corev1.EnvVar{{Name: "POD_NAME", ValueFrom: &corev1.EnvVarSource{FieldRef: &corev1.ObjectFieldSelector{FieldPath: "metadata.name"}}}},
		Ports:          []corev1.ContainerPort{{Name: "http", ContainerPort: 8080}},
		ReadinessProbe: &corev1.Probe{ProbeHandler: corev1.ProbeHandler{TCPSocket: &corev1.TCPSocketAction{Port: intstr.FromString("http")}}},
	}}}), metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := client.CoreV1().Services(ns).Create(ctx, &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: "web", Namespace: ns},
		Spec:       corev1.ServiceSpec{Selector: labels, Ports: []corev1.ServicePort{{Name: "http", Port: 80, TargetPort: intstr.FromString("http")}}},
	}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}

	pods := waitPods(t, client, ns, 2)
	nodes := map[string]corev1.Pod{}
	for _, p := range pods {
		nodes[p.Spec.NodeName] = p
	}
	if len(nodes) != 2 {
		t.Fatalf("pods on nodes %v, want one on each of n1 and n2", slices.Collect(maps.Keys(nodes)))
	}
	uid := string(nodes["n1"].UID)
	want1 := filepath.Join(kl.Node("n1").Cgroup, "kubepods.slice/kubepods-besteffort.slice", "kubepods-besteffort-pod"+strings.ReplaceAll(uid, "-", "_")+".slice")
	want2 := filepath.Join(kl.Node("n2").Cgroup, "kubepods/besteffort", "pod"+string(nodes["n2"].UID))
	for name, want := range map[string]string{"n1": want1, "n2": want2} {
		p := nodes[name]
		sim, ok := kl.Pod(ns, p.Name)
		if !ok {
			t.Fatalf("pod %s has no simulated pod", p.Name)
		}
		if sim.Cgroup != want {
			t.Errorf("pod on %s: cgroup %s, want %s", name, sim.Cgroup, want)
		}
		if got := containerProcs(t, sim.Cgroup); got != 1 {
			t.Errorf("pod on %s: %d processes in container cgroups, want 1", name, got)
		}
		if !netip.MustParsePrefix(map[string]string{"n1": "10.244.1.0/24", "n2": "10.244.2.0/24"}[name]).Contains(netip.MustParseAddr(p.Status.PodIP)) {
			t.Errorf("pod on %s has address %s, outside its node's range", name, p.Status.PodIP)
		}
	}
	// Each pod answers with its name at the address the API reports, from
	// the other pod's network namespace.
	from, _ := kl.Pod(ns, nodes["n2"].Name)
	out, err := exec.Command("ip", "netns", "exec", from.NetNS, curl, "-sS", "--max-time", "5", "http://"+nodes["n1"].Status.PodIP+":8080/").CombinedOutput()
	if err != nil || !strings.Contains(string(out), nodes["n1"].Name) {
		t.Fatalf("curl pod %s from pod %s: %v: %s", nodes["n1"].Name, nodes["n2"].Name, err, out)
	}
	waitFor(t, "the EndpointSlice to list both pods ready", func() error {
		return readyEndpoints(ctx, client, ns, "web", []string{nodes["n1"].Status.PodIP, nodes["n2"].Status.PodIP})
	})

	// A restarted container runs in a new container cgroup; the count shows.
	p1 := nodes["n1"]
	sim1, _ := kl.Pod(ns, p1.Name)
	before := containerDirs(t, sim1.Cgroup)
	if err := kl.RestartContainer(ns, p1.Name, "web"); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the restarted container to be reported", func() error {
		p, err := client.CoreV1().Pods(ns).Get(ctx, p1.Name, metav1.GetOptions{})
		if err != nil {
			return err
		}
		if len(p.Status.ContainerStatuses) != 1 || p.Status.ContainerStatuses[0].RestartCount != 1 || !p.Status.ContainerStatuses[0].Ready {
			return fmt.Errorf("container statuses %+v", p.Status.ContainerStatuses)
		}
		return nil
	})
	after := containerDirs(t, sim1.Cgroup)
	if len(after) != 1 || slices.Equal(before, after) {
		t.Errorf("container cgroups %v before the restart, %v after: want one new one", before, after)
	}

	// Scaling down deletes one pod; the kubelet removes it and confirms.
	// A patch, not Get and Update: the Deployment controller writes the
	// object's status meanwhile, and an Update of the read version fails.
	if _, err := client.AppsV1().Deployments(ns).Patch(ctx, "web", types.MergePatchType, []byte(`{"spec":{"replicas":1}}`), metav1.PatchOptions{}); err != nil {
		t.Fatal(err)
	}
	left := waitPods(t, client, ns, 1)
	var gone corev1.Pod
	for _, p := range pods {
		if p.UID != left[0].UID {
			gone = p
		}
	}
	if _, ok := kl.Pod(ns, gone.Name); ok {
		t.Errorf("deleted pod %s still runs", gone.Name)
	}
	if _, err := os.Stat(filepath.Join("/run/netns", "sluice-"+c.ID+"-"+string(gone.UID)[:8])); !os.IsNotExist(err) {
		t.Errorf("deleted pod %s: network namespace still there (%v)", gone.Name, err)
	}
	if err := kl.Errors(); err != nil {
		t.Errorf("kubelet errors: %v", err)
	}

	kl.Close()
	closed = true
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	if left, err := cluster.Leftovers(c.ID); err != nil || len(left) > 0 {
		t.Errorf("after Close: %v, %v", left, err)
	}
}

// waitPods waits until namespace ns has exactly n pods, all running and
// ready, none being deleted, and returns them.
func waitPods(t *testing.T, client kubernetes.Interface, ns string, n int) []corev1.Pod {
	t.Helper()
	var pods []corev1.Pod
	waitFor(t, fmt.Sprintf("%d ready pods in %s", n, ns), func() error {
		list, err := client.CoreV1().Pods(ns).List(t.Context(), metav1.ListOptions{})
		if err != nil {
			return err
		}
		pods = list.Items
		if len(pods) != n {
			return fmt.Errorf("%d pods", len(pods))
		}
		for _, p := range pods {
			if p.DeletionTimestamp != nil || p.Status.Phase != corev1.PodRunning || !kube.PodReady(&p) {
				return fmt.Errorf("pod %s: phase %s, being deleted %v, conditions %+v", p.Name, p.Status.Phase, p.DeletionTimestamp != nil, p.Status.Conditions)
			}
		}
		return nil
	})
	return pods
}

func readyEndpoints(ctx context.Context, client kubernetes.Interface, ns, svc string, want []string) error {
	slices, err := client.DiscoveryV1().EndpointSlices(ns).List(ctx, metav1.ListOptions{LabelSelector: discoveryv1.LabelServiceName + "=" + svc})
	if err != nil {
		return err
	}
	var got []string
	for _, s := range slices.Items {
		for _, e := range s.Endpoints {
			if e.Conditions.Ready != nil && *e.Conditions.Ready {
				got = append(got, e.Addresses...)
			}
		}
	}
	if !sameSet(got, want) {
		return fmt.Errorf("ready endpoints %v, want %v", got, want)
	}
	return nil
}

func sameSet(a, b []string) bool {
	a, b = slices.Clone(a), slices.Clone(b)
	slices.Sort(a)
	slices.Sort(b)
	return slices.Equal(a, b)
}

// containerDirs lists the cgroups below a pod's.
func containerDirs(t *testing.T, pod string) []string {
	t.Helper()
	entries, err := os.ReadDir(pod)
	if err != nil {
		t.Fatal(err)
	}
	var dirs []string
	for _, e := range entries {
		if e.IsDir() {
			dirs = append(dirs, e.Name())
		}
	}
	return dirs
}

// containerProcs counts the processes in the cgroups below a pod's.
func containerProcs(t *testing.T, pod string) int {
	t.Helper()
	n := 0
	for _, d := range containerDirs(t, pod) {
		data, err := os.ReadFile(filepath.Join(pod, d, "cgroup.procs"))
		if err != nil {
			t.Fatal(err)
		}
		n += len(strings.Fields(string(data)))
	}
	return n
}

func waitFor(t *testing.T, what string, check func() error) {
	t.Helper()
	kube.WaitFor(t, waitTimeout, what, check)
}
