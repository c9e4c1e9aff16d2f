//go:build !race

package btt_test

const raceEnabled = false
