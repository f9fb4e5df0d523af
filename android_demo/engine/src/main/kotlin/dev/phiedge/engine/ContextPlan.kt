package dev.phiedge.engine

/**
 * How many positions of KV cache a package gets on this device, decided before anything is loaded:
 *
 *     budget = available * share - weights - logits - overhead          (bytes)
 *     context = min(requested or max_length, budget / kvPerPosition), rounded down to a multiple of [STEP]
 *               (a sliding-window package: requested or max_length whenever its buffer fits the budget)
 *
 * kvPerPosition = n_layers * 2 (key, value) * kv_heads * head_dim * bytes of the KV dtype: 96 KiB for phi-1.5
 * with an int8 cache (24 * 2 * 32 * 64 * 1; 384 KiB in float32), so its full 2048 positions take 192 MiB; Phi-3-mini's 4096
 * take 384 MiB. The context is the most the cache may hold: OrtBackend grows the cache to it with the conversation
 * ([KvGrowth]), so a package whose max_length is 128k costs what its conversation costs. The app shows [describe]
 * before loading, so the user sees what was chosen and why (runtime/kvcache.py plans the same way on a computer).
 */
data class ContextPlan(
    val context: Int,
    val maxLength: Int,
    val requested: Int?,
    val availableBytes: Long?,  // null: unknown (not measured), so the requested or full length is taken
    val weightBytes: Long,
    val kvBytesPerPosition: Long,
    val logitsBytes: Long,
    val window: Int? = null,  // a sliding-window cache: it holds KvGrowth.windowBuffer(window, context)
) {
    /** KV cache positions this plan may hold in memory at once (a window buffer whole: GroupQueryAttention touches
     *  it at the first step). */
    val positions: Int get() = KvGrowth.heldPositions(window, context)

    val kvBytes: Long get() = kvBytesPerPosition * positions

    /** One line for the UI: the context chosen and the figures it was chosen from. */
    fun describe(): String {
        val why = when {
            availableBytes == null -> "free memory unknown"
            context < (requested ?: maxLength) -> "limited by ${mib(availableBytes)} free memory"
            else -> "fits in ${mib(availableBytes)} free memory"
        }
        return "context $context of $maxLength positions ($why): weights ${mib(weightBytes)} + KV cache " +
            "${mib(kvBytes)} at most + logits ${mib(logitsBytes)}"
    }

    companion object {
        const val STEP = 64  // contexts are multiples of this
        const val SHARE = 0.6  // of the memory the system reports available, leave the rest to the system and UI
        const val OVERHEAD = 96L shl 20  // ONNX Runtime's arenas and scratch, the tokenizer, the app

        private fun mib(bytes: Long) = "%.0f MiB".format(bytes / 1048576.0)

        /**
         * The plan for [manifest] with [availableBytes] free (ActivityManager.MemoryInfo.availMem on a phone; null:
         * unknown), at most [requested] positions (null: the package's max_length), logits for at most [logitRows]
         * positions per step. Throws when not even [STEP] positions fit, naming what to do.
         */
        fun choose(manifest: Manifest, availableBytes: Long?, requested: Int? = null, logitRows: Int = 1): ContextPlan {
            val c = manifest.contract
            require(requested == null || requested in 1..manifest.maxLength) {
                "context $requested is outside 1..${manifest.maxLength} (the length the package's rotary tables cover)"
            }
            val perPosition = c.kvBytesPerPosition
            val logits = logitRows.toLong() * c.vocabSize * 4
            val want = requested ?: manifest.maxLength
            val window = c.window
            if (availableBytes == null) {
                return ContextPlan(want, manifest.maxLength, requested, null, manifest.weightBytes, perPosition, logits,
                    window)
            }
            val budget = (availableBytes * SHARE).toLong() - manifest.weightBytes - logits - OVERHEAD
            val fits = if (budget <= 0) 0L else budget / perPosition
            val context = if (fits >= KvGrowth.heldPositions(window, want)) want else (fits / STEP * STEP).toInt()
            val least = if (window == null) STEP else maxOf(STEP, window)  // a window buffer is never smaller
            if (context < minOf(STEP, want) || (window != null && fits < window)) throw IllegalArgumentException(
                "${manifest.folder.name} needs ${mib(manifest.weightBytes + logits + OVERHEAD + perPosition * least)} " +
                    "for its weights and $least positions of KV cache, but only ${mib((availableBytes * SHARE).toLong())} " +
                    "of the ${mib(availableBytes)} free can be used; close other apps or export a smaller package " +
                    "(int4 weights, --kv-dtype int8)")
            return ContextPlan(context, manifest.maxLength, requested, availableBytes, manifest.weightBytes, perPosition,
                logits, window)
        }
    }
}
