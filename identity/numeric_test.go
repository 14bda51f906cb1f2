package identity

import (
	"fmt"
	"math/rand/v2"
	"strings"
	"testing"
)

func wid(i int) string { return fmt.Sprintf("spiffe://example.org/ns/ns%d/sa/sa%d", i%50, i) }

func TestAssignDerived(t *testing.T) {
	var reqs []Request
	for i := range 10000 {
		reqs = append(reqs, Request{SPIFFEID: wid(i)}, Request{SPIFFEID: wid(i)}) // two endpoints each
	}
	got, err := Assign(reqs)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 10000 {
		t.Fatalf("%d identities for 10000 IDs", len(got))
	}
	seen := map[uint32]string{}
	for id, n := range got {
		if n < FirstDerived {
			t.Errorf("%s: derived %d, below %d", id, n, FirstDerived)
		}
		if other, dup := seen[n]; dup {
			t.Errorf("%s and %s both have %d", id, other, n)
		}
		seen[n] = id
	}
	// The same set in another order gives the same numbers: they depend
	// on the set only.
	rand.New(rand.NewPCG(1, 2)).Shuffle(len(reqs), func(i, j int) { reqs[i], reqs[j] = reqs[j], reqs[i] })
	again, err := Assign(reqs)
	if err != nil {
		t.Fatal(err)
	}
	for id, n := range got {
		if again[id] != n {
			t.Fatalf("%s: %d, then %d in another order", id, n, again[id])
		}
	}
	// An ID's number does not depend on unrelated IDs.
	alone, err := Assign([]Request{{SPIFFEID: wid(77)}})
	if err != nil || alone[wid(77)] != got[wid(77)] {
		t.Errorf("alone %s gets %d (%v), among 10000 %d", wid(77), alone[wid(77)], err, got[wid(77)])
	}
}

// Two IDs whose first probes collide: the smaller keeps it, the larger
// takes its next probe; each alone has its first.
func TestAssignCollision(t *testing.T) {
	first := map[uint32]string{}
	var a, b string
	for i := 0; a == ""; i++ {
		if i == 1<<20 {
			t.Fatal("no collision among 2^20 IDs")
		}
		id := fmt.Sprintf("spiffe://example.org/ns/demo/sa/w%d", i)
		n := probe(id, 0)
		if other, ok := first[n]; ok {
			a, b = min(other, id), max(other, id)
		}
		first[n] = id
	}
	got, err := Assign([]Request{{SPIFFEID: b}, {SPIFFEID: a}})
	if err != nil {
		t.Fatal(err)
	}
	if got[a] != probe(a, 0) || got[b] != probe(b, 1) || got[a] == got[b] {
		t.Errorf("colliding %s and %s got %d and %d; want %d and %d", a, b, got[a], got[b], probe(a, 0), probe(b, 1))
	}
	alone, _ := Assign([]Request{{SPIFFEID: b}})
	if alone[b] != probe(b, 0) {
		t.Errorf("%s alone got %d, want its first probe %d", b, alone[b], probe(b, 0))
	}
}

func TestAssignGiven(t *testing.T) {
	got, err := Assign([]Request{
		{SPIFFEID: wid(1), Given: 7}, {SPIFFEID: wid(1), Given: 7}, {SPIFFEID: wid(2)}, {SPIFFEID: wid(3), Given: FirstDerived - 1},
	})
	if err != nil {
		t.Fatal(err)
	}
	if got[wid(1)] != 7 || got[wid(3)] != FirstDerived-1 || got[wid(2)] < FirstDerived {
		t.Errorf("got %v", got)
	}
	for _, tc := range []struct {
		name    string
		reqs    []Request
		mention string
	}{
		{"one number twice", []Request{{SPIFFEID: wid(1), Given: 7}, {SPIFFEID: wid(2), Given: 7}}, "are both given 7"},
		{"two numbers for one ID", []Request{{SPIFFEID: wid(1), Given: 7}, {SPIFFEID: wid(1), Given: 8}}, "two numbers, 7 and 8"},
		{"given and derived", []Request{{SPIFFEID: wid(1), Given: 7}, {SPIFFEID: wid(1)}}, "two numbers, 0 and 7"},
		{"a number in the derived range", []Request{{SPIFFEID: wid(1), Given: FirstDerived}}, "must be 1..2147483647"},
		{"not a SPIFFE ID", []Request{{SPIFFEID: "web"}}, "not a SPIFFE ID"},
		{"not a workload ID", []Request{{SPIFFEID: "spiffe://example.org/web"}}, "not a workload SPIFFE ID"},
	} {
		got, err := Assign(tc.reqs)
		if err == nil || !strings.Contains(err.Error(), tc.mention) || got != nil {
			t.Errorf("%s: %v, err = %v; want an error mentioning %q", tc.name, got, err, tc.mention)
		}
	}
}

func TestParseWorkloadID(t *testing.T) {
	w, err := ParseWorkloadID("spiffe://cluster.local/ns/demo/sa/web")
	if err != nil || w != (WorkloadID{"cluster.local", "demo", "web"}) || w.String() != "spiffe://cluster.local/ns/demo/sa/web" {
		t.Errorf("got %+v, %v", w, err)
	}
	for _, bad := range []string{"", "spiffe://cluster.local", "spiffe://cluster.local/ns/demo", "spiffe://cluster.local/ns/demo/sa/web/extra",
		"spiffe://cluster.local/sa/web/ns/demo", "spiffe://Cluster.local/ns/demo/sa/web", "http://cluster.local/ns/demo/sa/web"} {
		if _, err := ParseWorkloadID(bad); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
}
