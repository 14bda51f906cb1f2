package translate

import (
	"strings"
	"testing"

	rbacconfigv3 "github.com/envoyproxy/go-control-plane/envoy/config/rbac/v3"
)

// TestRBACHTTPMembersWithoutPayload checks the oneof members whose payload
// is a nil message, which the field policies cannot see: L4 refuses them
// as L7, HTTP as missing.
func TestRBACHTTPMembersWithoutPayload(t *testing.T) {
	for _, tc := range []struct {
		name   string
		http   bool
		pm     *rbacconfigv3.Permission
		pr     *rbacconfigv3.Principal
		field  string
		reason string
	}{
		{"L4 header permission", false, &rbacconfigv3.Permission{Rule: &rbacconfigv3.Permission_Header{}}, nil, "header", "header matching is L7"},
		{"L4 url_path permission", false, &rbacconfigv3.Permission{Rule: &rbacconfigv3.Permission_UrlPath{}}, nil, "url_path", "URL path matching is L7"},
		{"L4 header principal", false, nil, &rbacconfigv3.Principal{Identifier: &rbacconfigv3.Principal_Header{}}, "header", "header matching is L7"},
		{"HTTP header permission", true, &rbacconfigv3.Permission{Rule: &rbacconfigv3.Permission_Header{}}, nil, "header", "missing"},
		{"HTTP url_path permission", true, &rbacconfigv3.Permission{Rule: &rbacconfigv3.Permission_UrlPath{}}, nil, "url_path", "missing"},
		{"HTTP header principal", true, nil, &rbacconfigv3.Principal{Identifier: &rbacconfigv3.Principal_Header{}}, "header", "missing"},
	} {
		var err *fieldError
		if tc.pm != nil {
			_, err = newTally().permission(tc.pm, tc.http)
		} else {
			_, err = newTally().principal(tc.pr, tc.http)
		}
		if err == nil || err.field != tc.field || !strings.Contains(err.reason, tc.reason) {
			t.Errorf("%s: error %+v, want field %q saying %q", tc.name, err, tc.field, tc.reason)
		}
	}
}
