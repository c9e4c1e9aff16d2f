//go:build race

package btt_test

const raceEnabled = true
