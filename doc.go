// Package sluice is a sidecarless service-mesh dataplane for Linux. The code
// lives in its sub-packages; this package holds repository-wide tests.
package sluice
