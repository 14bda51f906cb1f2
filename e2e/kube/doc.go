// Package kube runs a real Kubernetes control plane (etcd, kube-apiserver
// and kube-controller-manager, no scheduler and no kubelets) on loopback
// for tests, with admin and service-account clients.
//
// The binaries are built from source with the go command, from the module
// e2e/kube/tools (k8s.io/kubernetes and etcd at pinned versions), once per
// machine. Binaries caches them in $SLUICE_KUBE_CACHE, by default
// /var/cache/sluice/kube, in a directory named after the versions and a
// hash of the tools module and the build flags, so changing either builds
// anew; delete the directory to rebuild. A cold build takes over ten
// minutes on two CPUs and 2.3 GB of memory, and runs at the lowest CPU
// priority. Concurrent test binaries wait for one build under a file lock,
// and a build enters the cache only when complete. A build cut short keeps
// its compiled packages in the go build cache, so the next one resumes.
//
// Start runs a control plane in a directory; StartForTest does so for a
// test, skipping it (failing under CI=true) when the binaries cannot be
// built because the module proxy is unreachable. Tests play scheduler and
// kubelet themselves: they bind pods with the binding subresource and set
// pod status through the status subresource.
package kube
