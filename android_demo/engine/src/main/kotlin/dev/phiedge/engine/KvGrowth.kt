package dev.phiedge.engine

/**
 * How a KV cache grows with the tokens held (runtime/kvcache.py grown_capacity, the same policy and the same golden
 * vectors): the first allocation is [FIRST] positions, each later one at least doubles, every size is a multiple of
 * [STEP], none exceeds the context. A conversation of n tokens has copied fewer than 2n positions in all.
 */
object KvGrowth {
    const val FIRST = 256
    const val STEP = 64

    /** Bytes of attention scores one run may take: ONNX Runtime's CPU GroupQueryAttention holds heads x rows x
     *  capacity float32 scores, and its arena keeps them (runtime/kvcache.py SCRATCH, measured there). */
    const val SCRATCH = 32L shl 20
    const val MIN_ROWS = 64
    const val MAX_ROWS = 256

    /** Tokens: a step this short (a decode step, a verification) is one run. */
    const val SHORT = 16

    /** A sliding-window package's buffer holds this many positions beyond its window (runtime/kvcache.py EVICT). */
    const val EVICT = 256

    /** Positions a sliding-window cache's buffer holds: its window and [EVICT] more, no more than the context needs,
     *  never fewer than the window (GroupQueryAttention refuses a smaller buffer). */
    fun windowBuffer(window: Int, context: Int): Int = maxOf(window, minOf(context, window + EVICT))

    /** KV cache positions a context may hold in memory: the context, or a window package's buffer. */
    fun heldPositions(window: Int?, context: Int): Int = window?.let { windowBuffer(it, context) } ?: context

    /** Most tokens one run appends to a cache of [capacity] positions (runtime/kvcache.py step_rows). */
    fun stepRows(heads: Int, capacity: Int): Int =
        (SCRATCH / (4L * heads * capacity)).coerceIn(MIN_ROWS.toLong(), MAX_ROWS.toLong()).toInt()

    /** Positions to allocate for [needed] when [allocated] are, at most [limit]. */
    fun grownCapacity(allocated: Int, needed: Int, limit: Int): Int {
        require(needed <= limit) { "$needed positions do not fit in a context of $limit" }
        if (needed <= allocated) return allocated
        val size = maxOf(needed.toLong(), 2L * allocated, FIRST.toLong())
        return minOf(limit.toLong(), (size + STEP - 1) / STEP * STEP).toInt()
    }
}
