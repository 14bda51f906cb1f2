package kube

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/util/retry"
)

// StartForTest starts a control plane for t in a fresh temporary
// directory, building the binaries first when the cache lacks them (a
// quarter of an hour on two busy CPUs: run such tests with -timeout 30m).
// When t ends it stops the control plane, first showing the end of each
// process's log if t failed.
// It skips t when the binaries cannot be built here (ErrUnavailable),
// saying why; under CI=true, where the module proxy is expected, it fails t
// instead.
func StartForTest(t testing.TB) *ControlPlane {
	t.Helper()
	log := slog.New(slog.NewTextHandler(testWriter{t}, nil))
	// A build cut short by the test's deadline would end in a panic that
	// leaves the compilers running; stop it a minute before instead.
	ctx := t.Context()
	if dt, ok := t.(interface{ Deadline() (time.Time, bool) }); ok {
		if deadline, ok := dt.Deadline(); ok {
			var cancel context.CancelFunc
			ctx, cancel = context.WithDeadline(ctx, deadline.Add(-time.Minute))
			defer cancel()
		}
	}
	bins, err := Binaries(ctx, log)
	if errors.Is(err, ErrUnavailable) {
		if os.Getenv("CI") == "true" {
			t.Fatalf("kubernetes binaries cannot be built under CI=true: %v", err)
		}
		t.Skipf("skipping: needs kube-apiserver, kube-controller-manager and etcd: %v", err)
	}
	if err != nil {
		t.Fatal(err)
	}
	// Not t.Context: it is cancelled before cleanups run, and the control
	// plane must outlive the test's last line.
	cp, err := Start(context.Background(), t.TempDir(), bins)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("control-plane logs:\n%s", cp.Logs(80))
		}
		if err := cp.Close(); err != nil {
			t.Errorf("stop control plane: %v", err)
		}
	})
	return cp
}

// testWriter sends log lines to t.Log.
type testWriter struct{ t testing.TB }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimSuffix(string(p), "\n"))
	return len(p), nil
}

// WaitFor polls check until it returns nil, failing t with the last error
// after timeout, or at once when t's context ends.
func WaitFor(t testing.TB, timeout time.Duration, what string, check func() error) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		err := check()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("waited %v for %s: %v", timeout, what, err)
		}
		select {
		case <-t.Context().Done():
			t.Fatalf("waiting for %s: %v", what, context.Cause(t.Context()))
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// BindAndRun binds the pod to node as a scheduler would, then reports it
// running and ready with the address ip as a kubelet would.
func BindAndRun(t testing.TB, client kubernetes.Interface, ns, pod, node, ip string) {
	t.Helper()
	ctx := t.Context()
	err := client.CoreV1().Pods(ns).Bind(ctx, &corev1.Binding{
		ObjectMeta: metav1.ObjectMeta{Name: pod, Namespace: ns},
		Target:     corev1.ObjectReference{Kind: "Node", Name: node},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("bind pod %s to %s: %v", pod, node, err)
	}
	err = retry.RetryOnConflict(retry.DefaultRetry, func() error {
		p, err := client.CoreV1().Pods(ns).Get(ctx, pod, metav1.GetOptions{})
		if err != nil {
			return err
		}
		if p.Spec.NodeName != node {
			return fmt.Errorf("pod %s bound to %q after binding, want %q", pod, p.Spec.NodeName, node)
		}
		now := metav1.Now()
		p.Status.Phase = corev1.PodRunning
		p.Status.HostIP, p.Status.HostIPs = "192.0.2.1", []corev1.HostIP{{IP: "192.0.2.1"}}
		p.Status.PodIP, p.Status.PodIPs = ip, []corev1.PodIP{{IP: ip}}
		p.Status.StartTime = &now
		p.Status.Conditions = nil
		for _, c := range []corev1.PodConditionType{corev1.PodScheduled, corev1.PodInitialized, corev1.ContainersReady, corev1.PodReady} {
			p.Status.Conditions = append(p.Status.Conditions, corev1.PodCondition{Type: c, Status: corev1.ConditionTrue, LastTransitionTime: now})
		}
		_, err = client.CoreV1().Pods(ns).UpdateStatus(ctx, p, metav1.UpdateOptions{})
		return err
	})
	if err != nil {
		t.Fatalf("set status of pod %s: %v", pod, err)
	}
}

// PodReady reports whether the pod's Ready condition is True.
func PodReady(p *corev1.Pod) bool {
	for _, c := range p.Status.Conditions {
		if c.Type == corev1.PodReady {
			return c.Status == corev1.ConditionTrue
		}
	}
	return false
}
