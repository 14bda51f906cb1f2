package kube_test

import (
	"context"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/util/retry"

	kubetest "github.com/sluice-mesh/sluice/e2e/kube"
	"github.com/sluice-mesh/sluice/identity"
	"github.com/sluice-mesh/sluice/identity/kube"
)

// waitTimeout bounds each wait for the watcher: generous, the machine may
// be busy; nothing here asserts how fast anything is.
const waitTimeout = 2 * time.Minute

// podCluster plays scheduler and kubelet for the watcher test: it creates
// pods on nodes, gives them addresses, and makes their pod cgroups in a
// kubelet layout under root.
type podCluster struct {
	t      *testing.T
	client kubernetes.Interface
	root   string
}

// podSpec describes a pod the test creates.
type podSpec struct {
	ns, name, node, sa string
	labels             map[string]string
	hostNetwork        bool
	ips                []string // none: no address yet
	layout             string   // "systemd" or "cgroupfs"; "" for no cgroup
}

func (c *podCluster) create(p podSpec) *corev1.Pod {
	t := c.t
	t.Helper()
	ctx := t.Context()
	pod, err := c.client.CoreV1().Pods(p.ns).Create(ctx, &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: p.name, Namespace: p.ns, Labels: p.labels},
		Spec: corev1.PodSpec{
			NodeName: p.node, ServiceAccountName: p.sa, HostNetwork: p.hostNetwork,
			Containers: []corev1.Container{{Name: "app", Image: "registry.invalid/app:1"}}, // never pulled: there is no kubelet
		},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("create pod %s/%s: %v", p.ns, p.name, err)
	}
	if len(p.ips) > 0 {
		c.setStatus(pod, func(s *corev1.PodStatus) {
			s.Phase = corev1.PodRunning
			s.PodIP = p.ips[0]
			for _, ip := range p.ips {
				s.PodIPs = append(s.PodIPs, corev1.PodIP{IP: ip})
			}
		})
	}
	if p.layout != "" {
		c.mkCgroup(pod, p.layout)
	}
	return pod
}

func (c *podCluster) setStatus(pod *corev1.Pod, mod func(*corev1.PodStatus)) {
	t := c.t
	t.Helper()
	err := retry.RetryOnConflict(retry.DefaultRetry, func() error {
		p, err := c.client.CoreV1().Pods(pod.Namespace).Get(t.Context(), pod.Name, metav1.GetOptions{})
		if err != nil {
			return err
		}
		mod(&p.Status)
		_, err = c.client.CoreV1().Pods(pod.Namespace).UpdateStatus(t.Context(), p, metav1.UpdateOptions{})
		return err
	})
	if err != nil {
		t.Fatalf("set status of pod %s/%s: %v", pod.Namespace, pod.Name, err)
	}
}

// cgroupPath returns where kubelet would put pod's cgroup in layout, with a
// burstable QoS class.
func (c *podCluster) cgroupPath(pod *corev1.Pod, layout string) string {
	uid := string(pod.UID)
	if layout == "systemd" {
		return filepath.Join(c.root, "kubepods.slice/kubepods-burstable.slice",
			"kubepods-burstable-pod"+strings.ReplaceAll(uid, "-", "_")+".slice")
	}
	return filepath.Join(c.root, "kubepods/besteffort/pod"+uid)
}

// mkCgroup makes pod's cgroup in layout, with a container's below it.
func (c *podCluster) mkCgroup(pod *corev1.Pod, layout string) {
	c.t.Helper()
	ctr := "cri-containerd-" + strings.Repeat("ab", 32) + ".scope"
	if layout == "cgroupfs" {
		ctr = strings.Repeat("cd", 32)
	}
	if err := os.MkdirAll(filepath.Join(c.cgroupPath(pod, layout), ctr), 0o755); err != nil {
		c.t.Fatal(err)
	}
}

func (c *podCluster) labelNamespace(ns, value string) {
	c.t.Helper()
	err := retry.RetryOnConflict(retry.DefaultRetry, func() error {
		n, err := c.client.CoreV1().Namespaces().Get(c.t.Context(), ns, metav1.GetOptions{})
		if err != nil {
			return err
		}
		if value == "" {
			delete(n.Labels, kube.MeshLabel)
		} else {
			if n.Labels == nil {
				n.Labels = map[string]string{}
			}
			n.Labels[kube.MeshLabel] = value
		}
		_, err = c.client.CoreV1().Namespaces().Update(c.t.Context(), n, metav1.UpdateOptions{})
		return err
	})
	if err != nil {
		c.t.Fatalf("label namespace %s: %v", ns, err)
	}
}

func (c *podCluster) labelPod(pod *corev1.Pod, value string) {
	c.t.Helper()
	err := retry.RetryOnConflict(retry.DefaultRetry, func() error {
		p, err := c.client.CoreV1().Pods(pod.Namespace).Get(c.t.Context(), pod.Name, metav1.GetOptions{})
		if err != nil {
			return err
		}
		if p.Labels == nil {
			p.Labels = map[string]string{}
		}
		p.Labels[kube.MeshLabel] = value
		_, err = c.client.CoreV1().Pods(pod.Namespace).Update(c.t.Context(), p, metav1.UpdateOptions{})
		return err
	})
	if err != nil {
		c.t.Fatalf("label pod %s/%s: %v", pod.Namespace, pod.Name, err)
	}
}

// names returns the workloads as sorted "namespace/name".
func names(ws []identity.Workload) []string {
	out := make([]string, len(ws))
	for i, w := range ws {
		out[i] = w.Namespace + "/" + w.Name
	}
	slices.Sort(out)
	return out
}

// waitSignalled waits until w lists the workloads want, checking again
// each time w signals a change: it fails unless a signal follows the
// change that makes the list right.
func waitSignalled(t *testing.T, w *kube.Watcher, what string, want ...string) {
	t.Helper()
	slices.Sort(want)
	deadline := time.After(waitTimeout)
	for {
		got := names(w.Workloads())
		if slices.Equal(got, want) {
			return
		}
		select {
		case <-w.Changes():
		case <-deadline:
			t.Fatalf("%s: no change signalled within %v that lists %v; lists %v", what, waitTimeout, want, got)
		}
	}
}

// waitPolled waits until w lists the workloads want, asking every 50 ms:
// for changes the watcher is not told of (cgroups appearing).
func waitPolled(t *testing.T, w *kube.Watcher, what string, want ...string) {
	t.Helper()
	slices.Sort(want)
	deadline := time.Now().Add(waitTimeout)
	for {
		got := names(w.Workloads())
		if slices.Equal(got, want) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: lists %v after %v, want %v", what, got, waitTimeout, want)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// TestWatcher needs kube-apiserver, kube-controller-manager and etcd
// (e2e/kube: built on first use, a quarter of an hour; run it with
// -timeout 30m).
func TestWatcher(t *testing.T) {
	cp := kubetest.StartForTest(t)
	client, err := kubernetes.NewForConfig(cp.Config())
	if err != nil {
		t.Fatal(err)
	}
	ctx := t.Context()
	c := &podCluster{t: t, client: client, root: t.TempDir()}
	for _, n := range []string{"n1", "n2"} {
		if _, err := client.CoreV1().Nodes().Create(ctx, &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: n}}, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	// "on" is enrolled, "off" not (yet).
	for ns, labels := range map[string]map[string]string{"on": {kube.MeshLabel: kube.MeshEnabled}, "off": nil} {
		if _, err := client.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns, Labels: labels}}, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		// Pods are admitted only with an existing service account; the
		// controller may have made "default" already.
		for _, sa := range []string{"default", "api"} {
			_, err := client.CoreV1().ServiceAccounts(ns).Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: sa}}, metav1.CreateOptions{})
			if err != nil && !apierrors.IsAlreadyExists(err) {
				t.Fatal(err)
			}
		}
	}
	optOut := map[string]string{kube.MeshLabel: kube.MeshDisabled}
	optIn := map[string]string{kube.MeshLabel: kube.MeshEnabled, "app": "db"}

	// Pods that run before the watcher starts.
	api := c.create(podSpec{ns: "on", name: "api", node: "n1", sa: "api", labels: map[string]string{"app": "api"}, ips: []string{"10.244.1.10"}, layout: "systemd"})
	optedOut := c.create(podSpec{ns: "on", name: "opted-out", node: "n1", labels: optOut, ips: []string{"10.244.1.11"}, layout: "cgroupfs"})
	c.create(podSpec{ns: "on", name: "host", node: "n1", hostNetwork: true, ips: []string{"192.0.2.1"}, layout: "systemd"})
	c.create(podSpec{ns: "on", name: "no-ip", node: "n1", layout: "systemd"})
	c.create(podSpec{ns: "on", name: "elsewhere", node: "n2", ips: []string{"10.244.2.10"}, layout: "systemd"})
	db := c.create(podSpec{ns: "off", name: "db", node: "n1", labels: optIn, ips: []string{"10.244.1.12", "fd00:10:244:1::12"}, layout: "cgroupfs"})
	batch := c.create(podSpec{ns: "off", name: "batch", node: "n1", ips: []string{"10.244.1.13"}, layout: "cgroupfs"})

	log := testLogger(t)
	w, err := kube.New(kube.Options{Client: client, Node: "n1", CgroupRoot: c.root, TrustDomain: "example.org", Logger: log})
	if err != nil {
		t.Fatal(err)
	}
	runDone := make(chan struct{})
	// Not t.Context: the watcher stops in a cleanup, after it is cancelled.
	runCtx, stop := context.WithCancel(context.Background())
	go func() {
		defer close(runDone)
		w.Run(runCtx)
	}()
	t.Cleanup(func() { stop(); <-runDone })
	if err := w.WaitForSync(ctx); err != nil {
		t.Fatal(err)
	}

	// Once synced, every enrolled pod is there: an agent that restarts
	// applies its first state with all of them. Sorted by namespace, then name.
	want := []identity.Workload{
		{
			Name: "db", Namespace: "off", ServiceAccount: "default", SPIFFEID: "spiffe://example.org/ns/off/sa/default",
			Cgroup: c.cgroupPath(db, "cgroupfs"), Labels: optIn,
			Addrs: []netip.Addr{netip.MustParseAddr("10.244.1.12"), netip.MustParseAddr("fd00:10:244:1::12")}, Node: "n1",
		},
		{
			Name: "api", Namespace: "on", ServiceAccount: "api", SPIFFEID: "spiffe://example.org/ns/on/sa/api",
			Cgroup: c.cgroupPath(api, "systemd"), Labels: map[string]string{"app": "api"},
			Addrs: []netip.Addr{netip.MustParseAddr("10.244.1.10")}, Node: "n1",
		},
	}
	if got := w.Workloads(); !reflect.DeepEqual(got, want) {
		t.Fatalf("after sync: workloads\n%+v\nwant\n%+v", got, want)
	}

	c.labelNamespace("off", kube.MeshEnabled)
	waitSignalled(t, w, "namespace off enrolled", "on/api", "off/db", "off/batch")

	c.labelPod(api, kube.MeshDisabled)
	waitSignalled(t, w, "pod on/api opted out", "off/db", "off/batch")

	// A pod created after the start, whose address comes before its cgroup.
	late := c.create(podSpec{ns: "on", name: "late", node: "n1", ips: []string{"10.244.1.14"}})
	waitSignalled(t, w, "pod on/late created, no cgroup yet", "off/db", "off/batch")
	c.mkCgroup(late, "systemd")
	waitPolled(t, w, "pod on/late's cgroup made", "on/late", "off/db", "off/batch")

	// Deleted gracefully, a pod stays a workload until the object is gone
	// (there is no kubelet to finish the deletion: the test does). The
	// watch delivers the pods' changes in order: once the label that
	// follows the deletion is seen, so is the deletion.
	if err := client.CoreV1().Pods("off").Delete(ctx, "db", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	c.labelPod(optedOut, kube.MeshEnabled)
	waitSignalled(t, w, "pod off/db being deleted, on/opted-out opted in", "on/late", "on/opted-out", "off/db", "off/batch")
	zero := int64(0)
	if err := client.CoreV1().Pods("off").Delete(ctx, "db", metav1.DeleteOptions{GracePeriodSeconds: &zero}); err != nil {
		t.Fatal(err)
	}
	waitSignalled(t, w, "pod off/db deleted", "on/late", "on/opted-out", "off/batch")

	c.setStatus(batch, func(s *corev1.PodStatus) { s.Phase = corev1.PodSucceeded })
	waitSignalled(t, w, "pod off/batch finished", "on/late", "on/opted-out")

	// The pod's own label keeps it enrolled.
	c.labelNamespace("on", "")
	waitSignalled(t, w, "namespace on unlabelled", "on/opted-out")
}

// testLogger logs to t.
func testLogger(t *testing.T) *slog.Logger {
	return slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimSuffix(string(p), "\n"))
	return len(p), nil
}
