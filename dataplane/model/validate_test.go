package model_test

import (
	"errors"
	"fmt"
	"net/netip"
	"strings"
	"testing"

	"github.com/sluice-mesh/sluice/dataplane/model"
)

func TestValidateSplits(t *testing.T) {
	ep := func(s string) model.Endpoint {
		ap := netip.MustParseAddrPort(s)
		return model.Endpoint{Addr: ap.Addr(), Port: ap.Port()}
	}
	svc := func(mod func(*model.Service)) model.State {
		s := model.Service{Name: "web", VIP: netip.MustParseAddr("10.96.0.1"), Port: 80, Protocol: model.TCP}
		mod(&s)
		return model.State{Services: []model.Service{s}}
	}
	for _, tc := range []struct {
		name    string
		state   model.State
		mention string // empty: valid
	}{
		{"same endpoint in two splits is fine", svc(func(s *model.Service) {
			s.Splits = []model.Split{{Name: "a", Weight: 1, Endpoints: []model.Endpoint{ep("10.1.0.1:80")}}, {Name: "b", Weight: 1, Endpoints: []model.Endpoint{ep("10.1.0.1:80")}}}
		}), ""},
		{"both endpoints and splits", svc(func(s *model.Service) {
			s.Endpoints = []model.Endpoint{ep("10.1.0.1:80")}
			s.Splits = []model.Split{{Name: "a", Weight: 1}}
		}), "has both endpoints and splits"},
		{"fast path off", svc(func(s *model.Service) { s.FastPath = model.FastPathOff }), ""},
		{"fast path setting out of range", svc(func(s *model.Service) { s.FastPath = 3 }), "fast path setting FastPath(3) is not unset, on or off"},
		{"repeated split name", svc(func(s *model.Service) {
			s.Splits = []model.Split{{Name: "a", Weight: 1}, {Name: "a", Weight: 2}}
		}), `split 1: name "a" is empty or repeated`},
		{"L7 clusters of every upstream protocol", svc(func(s *model.Service) {
			s.L7 = &model.L7{Routes: &model.HTTPRoutes{}, Clusters: []model.Cluster{
				{Name: "a"}, {Name: "b", Protocol: model.UpstreamHTTP2}, {Name: "c", Protocol: model.UpstreamUseDownstream},
			}}
		}), ""},
		{"L7 cluster of an unknown upstream protocol", svc(func(s *model.Service) {
			s.L7 = &model.L7{Routes: &model.HTTPRoutes{}, Clusters: []model.Cluster{{Name: "a"}, {Name: "b", Protocol: 3}}}
		}), `service "web" (10.96.0.1:80/TCP): cluster "b": upstream protocol UpstreamProtocol(3) is not HTTP/1.1, HTTP/2 or the client's`},
		{"bad endpoint inside a split", svc(func(s *model.Service) {
			s.Splits = []model.Split{{Name: "canary", Weight: 1, Endpoints: []model.Endpoint{ep("[fd00::1]:80")}}}
		}), `service "web" (10.96.0.1:80/TCP) split "canary" endpoint 0 ([fd00::1]:80): address family differs`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.state.Validate()
			if tc.mention == "" {
				if err != nil {
					t.Fatalf("valid state rejected: %v", err)
				}
				return
			}
			if !errors.Is(err, model.ErrInvalidState) || !strings.Contains(err.Error(), tc.mention) {
				t.Errorf("err = %v, want ErrInvalidState mentioning %q", err, tc.mention)
			}
		})
	}
}

func TestServiceEqual(t *testing.T) {
	ep := model.Endpoint{Addr: netip.MustParseAddr("10.1.0.1"), Port: 80, Workload: &model.Workload{Name: "a"}}
	base := model.Service{Name: "s", VIP: netip.MustParseAddr("10.96.0.1"), Port: 80, Protocol: model.TCP, Endpoints: []model.Endpoint{ep}}
	same := base
	same.Endpoints = []model.Endpoint{ep} // another backing array, equal content
	sameWorkloadValue := base
	e2 := ep
	e2.Workload = &model.Workload{Name: "a"}
	sameWorkloadValue.Endpoints = []model.Endpoint{e2}
	otherWorkload := base
	e3 := ep
	e3.Workload = &model.Workload{Name: "b"}
	otherWorkload.Endpoints = []model.Endpoint{e3}
	otherWeight := base
	e4 := ep
	e4.Weight = 2
	otherWeight.Endpoints = []model.Endpoint{e4}
	l7 := func(p model.UpstreamProtocol) model.Service {
		s := base
		s.Endpoints = nil
		s.L7 = &model.L7{Routes: &model.HTTPRoutes{}, Clusters: []model.Cluster{{Name: "c", Endpoints: []model.Endpoint{ep}, Protocol: p}}}
		return s
	}
	l7Base := l7(model.UpstreamHTTP1)
	split := base
	split.Endpoints = nil
	split.Splits = []model.Split{{Name: "x", Weight: 1, Endpoints: []model.Endpoint{ep}}}
	for _, tc := range []struct {
		name string
		o    model.Service
		want bool
	}{
		{"itself", base, true},
		{"equal copy", same, true},
		{"equal workload by value", sameWorkloadValue, true},
		{"other workload", otherWorkload, false},
		{"other weight", otherWeight, false},
		{"split instead of endpoints", split, false},
	} {
		if got := base.Equal(&tc.o); got != tc.want {
			t.Errorf("%s: Equal = %v, want %v", tc.name, got, tc.want)
		}
	}
	// An L7 service changes with the upstream protocol of a cluster: the
	// L7 proxy's feed publishes a configuration only when it changes.
	if o := l7(model.UpstreamHTTP1); !l7Base.Equal(&o) {
		t.Error("L7: Equal = false for an equal copy")
	}
	if o := l7(model.UpstreamHTTP2); l7Base.Equal(&o) {
		t.Error("L7: Equal = true with another upstream protocol")
	}
}

// Duplicate endpoints are found in small pools (pairwise) and large ones
// (with a map) alike.
func TestValidateDuplicateEndpoints(t *testing.T) {
	for _, n := range []int{3, 40} {
		var eps []model.Endpoint
		for i := range n {
			eps = append(eps, model.Endpoint{Addr: netip.AddrFrom4([4]byte{10, 1, 0, byte(i + 1)}), Port: 80})
		}
		eps = append(eps, eps[1])
		s := model.State{Services: []model.Service{{Name: "web", VIP: netip.MustParseAddr("10.96.0.1"), Port: 80, Protocol: model.TCP, Endpoints: eps}}}
		err := s.Validate()
		want := fmt.Sprintf("endpoint %d (10.1.0.2:80): duplicate of endpoint 1", n)
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%d endpoints: err = %v, want it to contain %q", n+1, err, want)
		}
	}
}
