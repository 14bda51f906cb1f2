// Package cluster builds a simulated cluster on one Linux host — nodes as
// cgroup subtrees, pods as network namespaces on a shared bridge with a
// cgroup under their node, a mesh file describing its services, and the
// nodes' Sluice agents (and, if wanted, a separate control plane) — and
// removes all of it again.
//
// It is a library, not a test helper: errors are returned, never reported
// to a testing.T, so tools such as the demo can use it too. docs/testing.md
// shows how scenario tests are written with it.
package cluster
