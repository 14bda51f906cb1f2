package translate

import (
	rbachttpv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/rbac/v3"

	"github.com/sluice-mesh/sluice/dataplane/model"
)

// Replaced by httprbac.go.
func (t *tally) httpRBACFilter(f *rbachttpv3.RBAC, name string, i int) (model.Policy, bool, *fieldError) {
	return model.Policy{}, false, errAt("", "HTTP RBAC is not supported yet")
}
