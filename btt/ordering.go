package btt

// Test hooks for the crash explorer's proof that it catches broken write
// orderings (btt/ordering_test.go holds the broken protocols and
// export_test.go sets these). Outside tests they are always nil and 0.
var (
	// brokenWrite, when set, replaces writeSector's protocol.
	brokenWrite func(b *BTT, l *lane, a *arena, premap uint32, src []byte) error
	// skipRule, when 1 or 2, makes commit leave out that rule's map
	// write-back (the rules are in commit's comment): these two checks
	// stay in commit itself, the only place the rules live.
	skipRule int
)
