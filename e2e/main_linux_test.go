// Package e2e_test holds Sluice's end-to-end tests and benchmarks; the
// simulated cluster and the demo live in sub-packages.
package e2e_test

import (
	"os"
	"testing"

	"github.com/sluice-mesh/sluice/e2e/probe"
	"github.com/sluice-mesh/sluice/e2e/testenv"
)

func TestMain(m *testing.M) {
	if os.Getenv(xdsServerEnv) != "" {
		os.Exit(runXDSServerProcess())
	}
	probe.Run()
	testenv.Main(m)
}
