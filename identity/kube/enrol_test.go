package kube_test

import (
	"net/netip"
	"reflect"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/sluice-mesh/sluice/identity"
	"github.com/sluice-mesh/sluice/identity/kube"
)

func TestEnrolled(t *testing.T) {
	enabled := map[string]string{kube.MeshLabel: kube.MeshEnabled}
	disabled := map[string]string{kube.MeshLabel: kube.MeshDisabled}
	running := func(mod func(*corev1.Pod)) *corev1.Pod {
		p := &corev1.Pod{
			ObjectMeta: metav1.ObjectMeta{Name: "web-1", Namespace: "shop"},
			Spec:       corev1.PodSpec{NodeName: "n1"},
			Status:     corev1.PodStatus{Phase: corev1.PodRunning, PodIP: "10.244.1.5", PodIPs: []corev1.PodIP{{IP: "10.244.1.5"}}},
		}
		if mod != nil {
			mod(p)
		}
		return p
	}
	labelled := func(l map[string]string) func(*corev1.Pod) { return func(p *corev1.Pod) { p.Labels = l } }
	for _, tc := range []struct {
		name     string
		pod      *corev1.Pod
		nsLabels map[string]string
		want     bool
	}{
		{"enrolled namespace", running(nil), enabled, true},
		{"unlabelled namespace", running(nil), nil, false},
		{"namespace labelled otherwise", running(nil), map[string]string{kube.MeshLabel: "yes"}, false},
		{"pod label, unlabelled namespace", running(labelled(enabled)), nil, true},
		{"pod label, namespace disabled", running(labelled(enabled)), disabled, true},
		{"pod opts out of an enrolled namespace", running(labelled(disabled)), enabled, false},
		{"pod label of another value", running(labelled(map[string]string{kube.MeshLabel: "on"})), enabled, true},
		{"host network", running(func(p *corev1.Pod) { p.Spec.HostNetwork = true; p.Labels = enabled }), enabled, false},
		{"no IP yet", running(func(p *corev1.Pod) { p.Status.PodIP, p.Status.PodIPs = "", nil; p.Status.Phase = corev1.PodPending }), enabled, false},
		{"pending with an IP", running(func(p *corev1.Pod) { p.Status.Phase = corev1.PodPending }), enabled, true},
		{"succeeded", running(func(p *corev1.Pod) { p.Status.Phase = corev1.PodSucceeded }), enabled, false},
		{"failed", running(func(p *corev1.Pod) { p.Status.Phase = corev1.PodFailed }), enabled, false},
		{"being deleted", running(func(p *corev1.Pod) { now := metav1.Now(); p.DeletionTimestamp = &now }), enabled, true},
		{"only status.podIP", running(func(p *corev1.Pod) { p.Status.PodIPs = nil }), enabled, true},
	} {
		got, why := kube.Enrolled(tc.pod, tc.nsLabels)
		if got != tc.want {
			t.Errorf("%s: Enrolled = %v (%s), want %v", tc.name, got, why, tc.want)
		}
		if !got && why == "" {
			t.Errorf("%s: not enrolled without a reason", tc.name)
		}
	}
}

func TestWorkload(t *testing.T) {
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "db-0", Namespace: "shop", Labels: map[string]string{"app": "db"}},
		Spec:       corev1.PodSpec{NodeName: "n1", ServiceAccountName: "db"},
		Status: corev1.PodStatus{PodIPs: []corev1.PodIP{
			{IP: "fd00:10:244::7"}, {IP: "10.244.1.7"}, {IP: "10.244.9.9"}, {IP: "bogus"},
		}},
	}
	got := kube.Workload(pod, "example.org", "/sys/fs/cgroup/kubepods/pod1")
	want := identity.Workload{
		Name: "db-0", Namespace: "shop", ServiceAccount: "db",
		SPIFFEID: "spiffe://example.org/ns/shop/sa/db",
		Cgroup:   "/sys/fs/cgroup/kubepods/pod1",
		Labels:   map[string]string{"app": "db"},
		Addrs:    []netip.Addr{netip.MustParseAddr("fd00:10:244::7"), netip.MustParseAddr("10.244.1.7")},
		Node:     "n1",
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("Workload =\n%+v\nwant\n%+v", got, want)
	}
	pod.Labels["app"] = "changed"
	if got.Labels["app"] != "db" {
		t.Error("the workload shares its labels with the pod")
	}
	pod.Spec.ServiceAccountName = ""
	if w := kube.Workload(pod, "cluster.local", "x"); w.ServiceAccount != "default" || w.SPIFFEID != "spiffe://cluster.local/ns/shop/sa/default" {
		t.Errorf("without a service account: %q, %q; want default", w.ServiceAccount, w.SPIFFEID)
	}
}
