package dataplane_test

import (
	"testing"

	"github.com/sluice-mesh/sluice/e2e/probe"
	"github.com/sluice-mesh/sluice/e2e/testenv"
)

func TestMain(m *testing.M) {
	probe.Run()
	testenv.Main(m)
}
