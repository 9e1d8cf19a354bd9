"""Constants shared by the pretraining tests: the tiny model and the tissue captions."""

# tiny MUSK for tests: 64 px images, 4x4 patches
TINY = dict(embed_dim=32, num_heads=2, ffn_dim=64, depth=2, img_size=64, patch_size=16,
            vocab_size=64010, max_text_positions=1024)
CLASSES = ("tumour nest", "stroma", "skin epithelium")
CAPTIONS = {
    "tumour nest": ["a nest of high-grade serous carcinoma cells", "tumour nest with atypical nuclei",
                    "carcinoma cells packed in a solid nest"],
    "stroma": ["fibrous ovarian stroma", "stromal tissue with spindle cells", "collagen-rich stroma"],
    "skin epithelium": ["stratified squamous epithelium of the skin", "skin with epidermis and dermis",
                        "keratinised squamous skin epithelium"],
}
