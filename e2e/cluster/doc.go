// Package cluster builds a simulated cluster on one Linux host — nodes as
// cgroup subtrees, pods as network namespaces on a shared bridge with a
// cgroup under their node — and removes all of it again.
package cluster
