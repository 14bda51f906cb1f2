// Package sockops turns the dataplane's socket-level events into flow
// records: it enriches each connection event with the workloads, services
// and identities the agent knows of.
package sockops
