// Package dataplane programs a node's desired service routing into the BPF
// maps read by Sluice's cgroup hooks, and owns those programs' lifecycle:
// load, attach through bpf_link, pin, adopt after a restart, and tear down.
//
// The model (State, Service, Endpoint) and its validation and compilation are
// pure Go and build on any OS; loading and map programming are Linux-only.
package dataplane
