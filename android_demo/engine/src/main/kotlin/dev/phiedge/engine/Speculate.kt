package dev.phiedge.engine

/**
 * Drafts for exact speculative decoding by prompt lookup (runtime/speculate.py): the tokens that followed the
 * most recent earlier occurrence of the text's last n tokens (n = 3, 2, 1). The loop verifies them in one
 * Backend.stepAll and keeps what the sampler agrees with, so the text is the same as without drafts. K adapts to
 * acceptance (starts at 2, doubles while every draft is kept, else the count kept); two verifies in a row that
 * keep nothing pause drafting (1, 2, 4 .. 32 steps).
 */
class NgramDrafter(val maxTokens: Int, ids: IntArray = IntArray(0)) {
    var k = minOf(START_TOKENS, maxTokens); private set
    private val ids = ArrayList<Int>()
    private val after = HashMap<List<Int>, Int>()  // n-gram -> where the token after its latest occurrence is
    private var misses = 0
    private var pause = 0

    init {
        require(maxTokens >= 1) { "draft tokens must be >= 1, got $maxTokens" }
        extend(ids)
    }

    fun extend(tokens: IntArray) {
        for (token in tokens) {
            val p = ids.size
            for (n in 1..minOf(MAX_NGRAM, p)) after[ids.subList(p - n, p).toList()] = p
            ids.add(token)
        }
    }

    fun propose(limit: Int): IntArray {
        if (pause > 0) { pause--; return IntArray(0) }
        val count = minOf(k, limit)
        if (count < 1) return IntArray(0)
        for (n in minOf(MAX_NGRAM, ids.size) downTo 1) {
            val at = after[ids.subList(ids.size - n, ids.size).toList()] ?: continue
            return IntArray(minOf(count, ids.size - at)) { ids[at + it] }
        }
        return IntArray(0)
    }

    fun feedback(drafted: Int, accepted: Int) {
        k = if (accepted == drafted) minOf(maxTokens, 2 * k) else maxOf(1, accepted)
        misses = if (accepted == 0) misses + 1 else 0
        if (misses >= 2) pause = minOf(MAX_PAUSE, 1 shl (misses - 2))
    }

    companion object {
        const val MAX_NGRAM = 3
        const val MAX_PAUSE = 32
        const val START_TOKENS = 2  // a verify step is not free: K doubles only while every draft is kept
        val DRAFTS = listOf("none", "ngram")
    }
}
