package kubeproxy_test

import (
	"testing"

	"github.com/sluice-mesh/sluice/e2e/testenv"
)

func TestMain(m *testing.M) { testenv.Main(m) }
