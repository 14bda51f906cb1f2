// Package kubelet plays the kubelet (and a minimal scheduler) for the nodes
// of a simulated cluster (package cluster) registered in a real Kubernetes
// API server (package kube): every pod bound to one of its nodes gets a
// network namespace, cgroups in the kubelet's layout, an address, and its
// containers as real processes, and its status is reported through the API.
// It is Linux-only.
package kubelet
