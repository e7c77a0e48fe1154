"""Model code shared by the encoder, the generator and the retriever: device choice, checkpoint loading, CPU
runtimes, the ColSmolVLM encoder and Idefics3 page preprocessing (tiling, resampling, token layout).

Heavy imports (torch, transformers, colpali-engine) happen inside the modules' functions and classes."""
