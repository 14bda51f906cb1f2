package xds

import (
	"runtime"
	"runtime/debug"
	"testing"
	"time"
)

func TestGarbageGrown(t *testing.T) {
	for _, tc := range []struct {
		live, objects uint64
		want          bool
	}{
		{0, 0, false},
		{40 << 20, 40 << 20, false},
		{40 << 20, 49 << 20, false}, // under a quarter
		{40 << 20, 51 << 20, true},  // over a quarter
		{4 << 20, 7 << 20, false},   // a quarter, but under 4 MiB
		{4 << 20, 9 << 20, true},
		{40 << 20, 30 << 20, false}, // swept below the last live heap
	} {
		if got := garbageGrown(tc.live, tc.objects); got != tc.want {
			t.Errorf("garbageGrown(%d MiB live, %d MiB objects) = %v, want %v", tc.live>>20, tc.objects>>20, got, tc.want)
		}
	}
}

// With the runtime's own collections turned off, only collectIfGrown can
// collect: it does once the heap holds enough garbage, and not otherwise.
func TestCollectIfGrown(t *testing.T) {
	defer debug.SetGCPercent(debug.SetGCPercent(-1))
	runtime.GC()
	c := &Client{}
	numGC := func() uint32 {
		var ms runtime.MemStats
		runtime.ReadMemStats(&ms)
		return ms.NumGC
	}
	waitGC := func(before uint32, wait time.Duration) bool {
		for deadline := time.Now().Add(wait); time.Now().Before(deadline); time.Sleep(time.Millisecond) {
			if numGC() > before && !c.collecting.Load() {
				return true
			}
		}
		return false
	}

	before := numGC()
	c.collectIfGrown()
	if waitGC(before, 300*time.Millisecond) {
		t.Fatal("collected right after a collection")
	}
	var garbage [][]byte
	for range 64 {
		garbage = append(garbage, make([]byte, 1<<20))
	}
	garbage = nil
	before = numGC()
	c.collectIfGrown()
	if !waitGC(before, 5*time.Second) {
		t.Fatal("64 MiB of garbage were not collected")
	}
	_ = garbage
}
