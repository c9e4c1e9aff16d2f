package btt

// Test-only access to the deliberately broken write orderings.

// BrokenOrderings names every broken ordering the crash explorer must catch.
var BrokenOrderings = map[string]int{
	"map-before-log":      orderMapBeforeLog,
	"seq-before-first":    orderSeqFirst,
	"log-one-write":       orderLogOneWrite,
	"data-not-flushed":    orderNoDataPersist,
	"data-after-log":      orderDataAfterLog,
	"no-fence-before-seq": orderNoFenceBeforeSeq,
	"no-rule1":            orderNoRule1,
	"no-rule2":            orderNoRule2,
}

// SetBrokenOrdering selects a broken ordering (0 restores the correct one).
func SetBrokenOrdering(o int) {
	brokenOrdering, brokenWrite, skipRule = o, nil, 0
	switch {
	case o == orderNoRule1:
		skipRule = 1
	case o == orderNoRule2:
		skipRule = 2
	case o != orderCorrect:
		brokenWrite = (*BTT).writeSectorBroken
	}
}
