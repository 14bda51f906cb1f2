//go:build !linux

package testenv

import (
	"os"
	"testing"
)

// Main runs the tests; off Linux, privileged tests skip (or fail under CI).
func Main(m *testing.M) { os.Exit(m.Run()) }

// RequirePrivileged skips the test: Sluice's dataplane needs Linux.
func RequirePrivileged(t testing.TB) {
	t.Helper()
	if os.Getenv("CI") == "true" {
		t.Fatal("privileged test cannot run under CI=true: needs Linux")
	}
	t.Skip("skipping privileged test: needs Linux")
}
