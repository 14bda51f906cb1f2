// Package testenv prepares privileged test environments on the real kernel:
// a private network namespace for the test process, cgroups, and bpffs pin
// directories, each removed (and checked for leaks) when the test ends.
package testenv
