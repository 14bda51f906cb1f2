// Package kubeproxy installs Kubernetes service VIPs the way kube-proxy
// would, so benchmarks and tests can set Sluice beside the usual
// alternative on the same kernel.
//
// It writes rules in the shape of kube-proxy's iptables mode (a
// KUBE-SERVICES chain jumping to a chain per service, which picks an
// endpoint chain at random with statistic matches and DNATs) and of its
// nftables mode (one table, a verdict map looked up once per packet, a
// chain per service choosing an endpoint with numgen), with masquerade
// marking and a reject for services without endpoints. The rules are this
// package's own imitation of those shapes, not kube-proxy's output; they
// are loaded into a simulated node's network namespace with the system's
// iptables-restore or nft.
//
// Generation is pure Go and works on any system; Load, Flush and Backend
// run the tools and need Linux.
package kubeproxy
