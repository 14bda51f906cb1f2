// Package demo runs Sluice's standalone demonstration: a simulated cluster
// with real pods, a service VIP routed by the kernel dataplane, and curl as
// the client.
package demo
