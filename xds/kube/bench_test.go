package kube_test

import (
	"fmt"
	"testing"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"

	"github.com/sluice-mesh/sluice/xds/kube"
)

// BenchmarkKubeScale measures the State at 10,000 Services and 100,000
// endpoints (ten per Service, each a running pod): the initial build
// (every Service translated and rendered, and the workload directories of
// 100,000 pods), the cost of one endpoint changing health afterwards, and
// of one pod changing address (its directory rendered again).
func BenchmarkKubeScale(b *testing.B) {
	const services, perService = 10_000, 10
	fill := func() (*kube.State, []*discoveryv1.EndpointSlice) {
		s := kube.NewState("cluster.local")
		slices := make([]*discoveryv1.EndpointSlice, services)
		for i := range services {
			name := fmt.Sprintf("svc-%d", i)
			s.SetService(service(name, func(svc *corev1.Service) {
				ip := fmt.Sprintf("10.96.%d.%d", i/250, i%250+1)
				svc.Spec.ClusterIP, svc.Spec.ClusterIPs = ip, []string{ip}
			}))
			addrs := make([]string, perService)
			for j := range addrs {
				n := i*perService + j
				addrs[j] = fmt.Sprintf("10.%d.%d.%d", 100+n/65536, n/256%256, n%256)
			}
			sl := slice(name, name+"-x", discoveryv1.AddressTypeIPv4, httpPort(8080), addrs...)
			for j := range sl.Endpoints {
				sl.Endpoints[j].TargetRef.Name = fmt.Sprintf("%s-%d", name, j)
				p := pod(sl.Endpoints[j].TargetRef.Name, "sa", "node-a")
				p.Status.Phase, p.Status.PodIPs = corev1.PodRunning, []corev1.PodIP{{IP: addrs[j]}}
				s.SetPod(p)
			}
			s.SetEndpointSlice(sl)
			slices[i] = sl
		}
		return s, slices
	}
	b.Run("initial", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			b.StopTimer()
			s, _ := fill()
			b.StartTimer()
			c := s.Flush()
			if len(c.Endpoints.Set) != services+kube.DirectoryShards {
				b.Fatalf("%d assignments, want %d and every directory", len(c.Endpoints.Set), services)
			}
		}
	})
	b.Run("endpoint-change", func(b *testing.B) {
		s, slices := fill()
		s.Flush()
		b.ReportAllocs()
		b.ResetTimer()
		i := 0
		for b.Loop() {
			sl := slices[i%services].DeepCopy()
			ready := sl.Endpoints[3].Conditions.Ready
			sl.Endpoints[3].Conditions.Ready = ptr(ready != nil && !*ready)
			slices[i%services] = sl
			s.SetEndpointSlice(sl)
			if c := s.Flush(); len(c.Endpoints.Set) != 1 {
				b.Fatalf("%d assignments changed, want 1", len(c.Endpoints.Set))
			}
			i++
		}
	})
	b.Run("pod-address-change", func(b *testing.B) {
		s, _ := fill()
		s.Flush()
		b.ReportAllocs()
		b.ResetTimer()
		i := 0
		for b.Loop() {
			p := pod("svc-42-3", "sa", "node-a")
			p.Status.Phase, p.Status.PodIPs = corev1.PodRunning, []corev1.PodIP{{IP: fmt.Sprintf("10.200.%d.%d", i/250%250, i%250)}}
			s.SetPod(p)
			if c := s.Flush(); len(c.Endpoints.Set) != 1 || c.Endpoints.Set[kube.DirectoryOf("demo", "svc-42-3")] == nil {
				b.Fatalf("assignments changed %d, want the directory alone", len(c.Endpoints.Set))
			}
			i++
		}
	})
}
