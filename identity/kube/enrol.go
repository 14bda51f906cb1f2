package kube

import (
	"maps"
	"net/netip"

	corev1 "k8s.io/api/core/v1"

	"github.com/sluice-mesh/sluice/identity"
)

// MeshLabel is the label that enrols a namespace or a pod in the mesh
// (MeshEnabled) or keeps a pod out of it (MeshDisabled).
const (
	MeshLabel    = "sluice.io/mesh"
	MeshEnabled  = "enabled"
	MeshDisabled = "disabled"
)

// Enrolled reports whether pod is one of its node's mesh workloads, given
// the labels of its namespace (nil if the namespace is not known), and if
// not, why, in a few words for logs:
//
//   - a host-network pod never is: its addresses are the node's, shared
//     with every other process on the host network;
//   - a pod without an IP address yet, or finished (Succeeded, Failed), is
//     no workload;
//   - otherwise the pod's own label decides when it is "enabled" or
//     "disabled", else the namespace's label when "enabled". Other values
//     count as no label.
//
// A pod being deleted (deletionTimestamp set) is still enrolled: its
// containers run until they stop, and keep their identity until the pod
// object is gone.
func Enrolled(pod *corev1.Pod, nsLabels map[string]string) (bool, string) {
	switch {
	case pod.Spec.HostNetwork:
		return false, "host network"
	case pod.Status.Phase == corev1.PodSucceeded || pod.Status.Phase == corev1.PodFailed:
		return false, "finished"
	case len(podAddrs(pod)) == 0:
		return false, "no IP address yet"
	}
	switch pod.Labels[MeshLabel] {
	case MeshEnabled:
		return true, ""
	case MeshDisabled:
		return false, "pod label " + MeshLabel + "=" + MeshDisabled
	}
	if nsLabels[MeshLabel] == MeshEnabled {
		return true, ""
	}
	return false, "neither the pod nor its namespace is labelled " + MeshLabel + "=" + MeshEnabled
}

// Workload describes pod as a local workload of node with the trust
// domain td: its SPIFFE ID from its namespace and service account
// ("default" if the pod names none), its addresses from status.podIPs (the
// first of each family), its labels, and cgroup, the pod cgroup's path.
func Workload(pod *corev1.Pod, td, cgroup string) identity.Workload {
	sa := pod.Spec.ServiceAccountName
	if sa == "" {
		sa = "default"
	}
	var labels map[string]string
	if len(pod.Labels) > 0 {
		labels = maps.Clone(pod.Labels)
	}
	return identity.Workload{
		Name:           pod.Name,
		Namespace:      pod.Namespace,
		ServiceAccount: sa,
		SPIFFEID:       identity.WorkloadID{TrustDomain: td, Namespace: pod.Namespace, ServiceAccount: sa}.String(),
		Cgroup:         cgroup,
		Labels:         labels,
		Addrs:          podAddrs(pod),
		Node:           pod.Spec.NodeName,
	}
}

// podAddrs returns the pod's addresses, at most one per family as a
// workload has: the first of each in status.podIPs (status.podIP if the
// list is empty). Unparsable ones are skipped.
func podAddrs(pod *corev1.Pod) []netip.Addr {
	ips := make([]string, 0, 2)
	for _, ip := range pod.Status.PodIPs {
		ips = append(ips, ip.IP)
	}
	if len(ips) == 0 && pod.Status.PodIP != "" {
		ips = append(ips, pod.Status.PodIP)
	}
	var out []netip.Addr
	var have4, have6 bool
	for _, s := range ips {
		a, err := netip.ParseAddr(s)
		if err != nil || !a.IsValid() || a.Zone() != "" {
			continue
		}
		a = a.Unmap()
		switch {
		case a.Is4() && !have4:
			have4 = true
		case a.Is6() && !have6:
			have6 = true
		default:
			continue
		}
		out = append(out, a)
	}
	return out
}
