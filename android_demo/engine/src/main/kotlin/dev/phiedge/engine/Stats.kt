package dev.phiedge.engine

import java.io.File

/**
 * Per-call generation statistics under the keys of runtime/stats.py, which benchmarks/ writes too, so a phone's
 * numbers drop into the same tables. Times are wall-clock seconds; CPU time is the whole process's user + system
 * time (every ONNX Runtime thread counts).
 *
 *     call start --prefill--> first token --decode (new_tokens - 1 steps)--> last token
 *     |<------ ttft_s ------>|<------------------ decode_s ------------------>|
 */
object StatsKeys {
    const val LOAD_S = "load_s"
    const val PROMPT_TOKENS = "prompt_tokens"
    const val NEW_TOKENS = "new_tokens"
    const val TTFT_S = "ttft_s"
    const val PREFILL_S = "prefill_s"
    const val PREFILL_TOKENS_PER_S = "prefill_tokens_per_s"
    const val DECODE_S = "decode_s"
    const val DECODE_TOKENS_PER_S = "decode_tokens_per_s"
    const val CPU_S = "cpu_s"
    const val CPU_S_PER_TOKEN = "cpu_s_per_token"
    const val PEAK_RSS_BYTES = "peak_rss_bytes"
    const val FINISH_REASON = "finish_reason"
    const val DECODE_STEPS = "decode_steps"  // forward passes after the prompt's
    const val DRAFT_TOKENS = "draft_tokens"  // tokens drafted by prompt lookup and verified
    const val ACCEPTED_TOKENS = "accepted_tokens"  // drafted tokens that were kept
    const val PACKAGE_BYTES = "package_bytes"  // model files on disk; per model like LOAD_S, written by benchmarks

    val KEYS = listOf(LOAD_S, PROMPT_TOKENS, NEW_TOKENS, TTFT_S, PREFILL_S, PREFILL_TOKENS_PER_S, DECODE_S,
        DECODE_TOKENS_PER_S, CPU_S, CPU_S_PER_TOKEN, PEAK_RSS_BYTES, FINISH_REASON, DECODE_STEPS, DRAFT_TOKENS,
        ACCEPTED_TOKENS)
}

/** Why a call ended; the strings are runtime.stats.FINISH_REASONS. */
enum class FinishReason(val key: String) {
    STOP("stop"), EOS("eos"), LENGTH("length"), CONTEXT("context"), CANCELLED("cancelled");

    override fun toString() = key
}

data class GenerationStats(
    val promptTokens: Int,
    val newTokens: Int,
    val ttftS: Double?,  // null when no token was sampled (cancelled during prefill)
    val prefillS: Double,
    val decodeS: Double,
    val cpuS: Double,
    val decodeCpuS: Double,
    val peakRssBytes: Long,
    val finishReason: FinishReason,
    val loadS: Double? = null,
    val decodeSteps: Int = 0,
    val draftTokens: Int = 0,
    val acceptedTokens: Int = 0,
) {
    init {
        require(promptTokens >= 0 && newTokens >= 0) {
            "token counts must be >= 0, got prompt_tokens=$promptTokens, new_tokens=$newTokens"
        }
    }

    val prefillTokensPerS: Double? get() = rate(promptTokens.toDouble(), prefillS)
    val decodeTokensPerS: Double? get() = rate((newTokens - 1).toDouble(), decodeS)
    val cpuSPerToken: Double? get() = if (newTokens > 1) decodeCpuS / (newTokens - 1) else null

    /** The JSON object runtime.stats.GenerationStats.to_json() writes, key for key. */
    fun toJson(): Map<String, Any?> = linkedMapOf(
        StatsKeys.LOAD_S to loadS, StatsKeys.PROMPT_TOKENS to promptTokens, StatsKeys.NEW_TOKENS to newTokens,
        StatsKeys.TTFT_S to ttftS, StatsKeys.PREFILL_S to prefillS, StatsKeys.PREFILL_TOKENS_PER_S to prefillTokensPerS,
        StatsKeys.DECODE_S to decodeS, StatsKeys.DECODE_TOKENS_PER_S to decodeTokensPerS, StatsKeys.CPU_S to cpuS,
        StatsKeys.CPU_S_PER_TOKEN to cpuSPerToken, StatsKeys.PEAK_RSS_BYTES to peakRssBytes,
        StatsKeys.FINISH_REASON to finishReason.key, StatsKeys.DECODE_STEPS to decodeSteps,
        StatsKeys.DRAFT_TOKENS to draftTokens, StatsKeys.ACCEPTED_TOKENS to acceptedTokens,
    )

    private fun rate(count: Double, seconds: Double): Double? = if (seconds > 0 && count > 0) count / seconds else null
}

/** Where the loop reads time and memory; the app may pass android.os.Process-based CPU time. */
interface Clock {
    fun wallNanos(): Long
    fun cpuNanos(): Long
    fun peakRssBytes(): Long
}

/** Linux (and Android) /proc/self: utime + stime of all threads, VmHWM. Values are 0 where /proc is missing. */
object ProcClock : Clock {
    private const val TICKS_PER_S = 100L  // USER_HZ; 100 on every Linux and Android ABI

    override fun wallNanos(): Long = System.nanoTime()

    override fun cpuNanos(): Long = try {
        val stat = File("/proc/self/stat").readText()
        val fields = stat.substring(stat.lastIndexOf(')') + 2).split(' ')  // fields from 3 (state) on
        (fields[11].toLong() + fields[12].toLong()) * (1_000_000_000L / TICKS_PER_S)  // utime, stime: fields 14, 15
    } catch (e: java.io.IOException) {
        0L
    }

    override fun peakRssBytes(): Long = try {
        File("/proc/self/status").readLines().firstOrNull { it.startsWith("VmHWM:") }
            ?.split(Regexes.BLANKS)?.get(1)?.toLong()?.times(1024) ?: 0L
    } catch (e: java.io.IOException) {
        0L
    }
}
