package model

import (
	"testing"
	"unsafe"
)

func TestLocalityRef(t *testing.T) {
	a := Locality{Region: "eu", Zone: "eu-1a", SubZone: "rack4"}
	b := Locality{Region: "eu", Zone: "eu-1a", SubZone: "rack4"}
	if a.Ref() != b.Ref() || a.Ref().Value() != a {
		t.Errorf("equal localities: refs %v and %v, value %+v", a.Ref(), b.Ref(), a.Ref().Value())
	}
	if c := (Locality{Region: "us"}); c.Ref() == a.Ref() || c.Ref().Value() != c {
		t.Errorf("other locality: ref equal %v, value %+v", c.Ref() == a.Ref(), c.Ref().Value())
	}
	if (Locality{}).Ref() != (LocalityRef{}) || (LocalityRef{}).Value() != (Locality{}) {
		t.Errorf("the zero locality is not the zero ref")
	}
	if size := unsafe.Sizeof(Endpoint{}); size > 56 {
		t.Errorf("Endpoint takes %d bytes, 56 expected: a mesh holds one per backend", size)
	}
}
