#include "textflag.h"

// The flush loops: AX = base aligned down to 64, CX = base+n (end);
// one flush instruction per line while AX < CX.

// func clwbRange(base, n uintptr)
TEXT ·clwbRange(SB), NOSPLIT, $0-16
	MOVQ base+0(FP), AX
	MOVQ n+8(FP), CX
	TESTQ CX, CX
	JZ   done
	ADDQ AX, CX
	ANDQ $-64, AX

loop:
	CLWB (AX)
	ADDQ $64, AX
	CMPQ AX, CX
	JB   loop

done:
	RET

// func clflushoptRange(base, n uintptr)
TEXT ·clflushoptRange(SB), NOSPLIT, $0-16
	MOVQ base+0(FP), AX
	MOVQ n+8(FP), CX
	TESTQ CX, CX
	JZ   done
	ADDQ AX, CX
	ANDQ $-64, AX

loop:
	CLFLUSHOPT (AX)
	ADDQ $64, AX
	CMPQ AX, CX
	JB   loop

done:
	RET

// func clflushRange(base, n uintptr)
TEXT ·clflushRange(SB), NOSPLIT, $0-16
	MOVQ base+0(FP), AX
	MOVQ n+8(FP), CX
	TESTQ CX, CX
	JZ   done
	ADDQ AX, CX
	ANDQ $-64, AX

loop:
	CLFLUSH (AX)
	ADDQ $64, AX
	CMPQ AX, CX
	JB   loop

done:
	RET

// func sfence()
TEXT ·sfence(SB), NOSPLIT, $0-0
	SFENCE
	RET

// func copyNTSSE2(dst, src unsafe.Pointer, n uintptr)
// dst 64-byte aligned, n a multiple of 64. Unaligned 16-byte loads,
// aligned non-temporal 16-byte stores (MOVNTDQ, spelled MOVNTO in Go asm).
TEXT ·copyNTSSE2(SB), NOSPLIT, $0-24
	MOVQ dst+0(FP), DI
	MOVQ src+8(FP), SI
	MOVQ n+16(FP), CX
	SHRQ $6, CX
	JZ   done

loop:
	MOVOU  0(SI), X0
	MOVOU  16(SI), X1
	MOVOU  32(SI), X2
	MOVOU  48(SI), X3
	MOVNTO X0, 0(DI)
	MOVNTO X1, 16(DI)
	MOVNTO X2, 32(DI)
	MOVNTO X3, 48(DI)
	ADDQ   $64, SI
	ADDQ   $64, DI
	DECQ   CX
	JNZ    loop

done:
	RET

// func copyNTAVX2(dst, src unsafe.Pointer, n uintptr)
// dst 64-byte aligned, n a multiple of 64. Unaligned 32-byte loads,
// aligned non-temporal 32-byte stores (VMOVNTDQ).
TEXT ·copyNTAVX2(SB), NOSPLIT, $0-24
	MOVQ dst+0(FP), DI
	MOVQ src+8(FP), SI
	MOVQ n+16(FP), CX
	SHRQ $6, CX
	JZ   done

loop:
	VMOVDQU  0(SI), Y0
	VMOVDQU  32(SI), Y1
	VMOVNTDQ Y0, 0(DI)
	VMOVNTDQ Y1, 32(DI)
	ADDQ     $64, SI
	ADDQ     $64, DI
	DECQ     CX
	JNZ      loop
	VZEROUPPER

done:
	RET
